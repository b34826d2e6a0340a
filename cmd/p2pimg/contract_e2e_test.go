package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The CLI's contract: exit 2 for every usage error, 1 for a failure, 130
// on interrupt; under --json every error is {"error": {"code", "message"}}
// on stdout; errors name what was wrong.
func TestCLIContract(t *testing.T) {
	t.Parallel()
	notKey := filepath.Join(t.TempDir(), "hostname")
	os.WriteFile(notKey, []byte("myhost\n"), 0o644)
	for _, c := range []struct {
		args []string
		code int
		want string // in stderr (or the JSON message)
		json string // the error code under --json, when set
	}{
		{[]string{"bogus"}, 2, `unknown command "bogus"`, ""},
		{[]string{"--json", "bogus"}, 2, `unknown command "bogus"`, "usage"},
		{[]string{"layers", "extra"}, 2, "takes no arguments", ""},
		{[]string{"layers", "--no-such-flag"}, 2, "unknown flag: --no-such-flag", ""},
		{[]string{"add", "x:1", "/tmp", "--chunk-size", "3K"}, 2, "--chunk-size 3K", ""},
		{[]string{"--json", "add", "x:1", "/tmp", "--hash", "md5"}, 2, `hash "md5"`, "usage"},
		{[]string{"activate", "x:1", "--at", "/opt/x", "--hosts", "12D3bogus"}, 2, `"12D3bogus" is not a peer id`, ""},
		{[]string{"activate", "x:1", "--at", "/opt/x", "--key", notKey}, 2, "not a key file made by 'p2pimg cluster operator-key", ""},
		{[]string{"status", "--state", "bogus"}, 2, `--state "bogus"`, ""},
		{[]string{"layers"}, 1, "daemon is not running", ""},
		{[]string{"doctor"}, 1, "doctor: 2 check(s) failed", ""},
		{[]string{"--json", "layers"}, 1, "daemon is not running", "daemon_unavailable"},
	} {
		out, errOut, code := cli(t, nil, c.args...)
		name := strings.Join(c.args, " ")
		if code != c.code {
			t.Errorf("p2pimg %s: exit %d, want %d (stderr %q)", name, code, c.code, errOut)
			continue
		}
		if c.json == "" {
			if !strings.Contains(errOut, c.want) {
				t.Errorf("p2pimg %s: stderr %q, want it to name %q", name, errOut, c.want)
			}
			continue
		}
		var e struct {
			Error struct{ Code, Message string }
		}
		if err := json.Unmarshal([]byte(out), &e); err != nil || e.Error.Code != c.json || !strings.Contains(e.Error.Message, c.want) {
			t.Errorf("p2pimg %s: stdout %q (%v), want an error of code %q naming %q", name, out, err, c.json, c.want)
		}
	}
}

// A secret key goes to a new 0600 file, never over another, and to
// stdout only when asked with -o -.
func TestIssuerKeyFile(t *testing.T) {
	t.Parallel()
	key := filepath.Join(t.TempDir(), "issuer.key")
	out, errOut, code := cli(t, nil, "license", "issuer-key", "-o", key)
	if code != 0 || out != "" || !strings.Contains(errOut, "issuer public key: ") {
		t.Fatalf("issuer-key -o: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v, want mode 0600", fi.Mode(), err)
	}
	before, _ := os.ReadFile(key)
	if _, errOut, code := cli(t, nil, "license", "issuer-key", "-o", key); code != 2 || !strings.Contains(errOut, "the file exists") {
		t.Fatalf("issuer-key over an existing file: exit %d %q", code, errOut)
	}
	if after, _ := os.ReadFile(key); !bytes.Equal(before, after) {
		t.Fatal("the existing key was overwritten")
	}
	if out, _, code := cli(t, nil, "license", "issuer-key", "-o", "-"); code != 0 || !strings.Contains(out, "PRIVATE KEY") {
		t.Fatalf("issuer-key -o -: exit %d %q", code, out)
	}
}

// Ctrl-C (SIGINT) while waiting on the daemon exits 130.
func TestInterruptExits130(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "mute.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() { // a daemon that never answers
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	cmd := exec.Command(bin, "layers")
	cmd.Env = append(os.Environ(), "P2PIMG_SOCKET="+sock)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-accepted:
		defer c.Close()
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the command never connected")
	}
	cmd.Process.Signal(syscall.SIGINT)
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 || !strings.Contains(errb.String(), "interrupted") {
		t.Fatalf("after SIGINT: %v, stderr %q; want exit 130", err, errb.String())
	}
}
