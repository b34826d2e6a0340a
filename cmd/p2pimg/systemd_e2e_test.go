package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Run as systemd runs a Type=notify service, the daemon says READY=1 once
// its store is open, WATCHDOG=1 while its API answers, and STOPPING=1 on
// SIGTERM, then exits 0.
func TestDaemonNotifiesSystemd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cmd := exec.Command(bin, "daemon", "--data", filepath.Join(dir, "data"), "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--open")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=400000")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	next := func(want string) {
		t.Helper()
		buf := make([]byte, 4096)
		for {
			conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("waiting for %s from the daemon: %v\nlog:\n%s", want, err, logs.String())
			}
			if strings.HasPrefix(string(buf[:n]), want) {
				return
			}
		}
	}
	next("READY=1")
	next("WATCHDOG=1")
	next("WATCHDOG=1")
	cmd.Process.Signal(syscall.SIGTERM)
	next("STOPPING=1")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("daemon after SIGTERM: %v\n%s", err, logs.String())
	}
}

// The packaged unit passes systemd-analyze verify (with ExecStart pointed
// at the binary under test): no error and no warning.
func TestSystemdUnitVerifies(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	b, err := os.ReadFile(filepath.Join("dist", "p2pimg.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "ExecStart=/usr/bin/p2pimg daemon --config /etc/p2pimg/daemon.toml") || !strings.Contains(string(b), "Type=notify") {
		t.Fatalf("the unit no longer starts the daemon as Type=notify with the packaged config:\n%s", b)
	}
	unit := filepath.Join(t.TempDir(), "p2pimg.service")
	os.WriteFile(unit, []byte(strings.ReplaceAll(string(b), "/usr/bin/p2pimg", bin)), 0o644)
	out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// The packaged default config parses, and a daemon started with it alone
// refuses to run an open cluster (exit 2, so systemd does not restart it).
func TestDefaultConfigRefusesOpenCluster(t *testing.T) {
	t.Parallel()
	_, errOut, code := cli(t, nil, "daemon", "--config", filepath.Join("dist", "daemon.toml"), "--data", t.TempDir(), "--socket-group", "")
	if code != 2 || !strings.Contains(errOut, "refusing to run an open cluster") || !strings.Contains(errOut, "--open") {
		t.Fatalf("daemon with the default config: exit %d, %q", code, errOut)
	}
}
