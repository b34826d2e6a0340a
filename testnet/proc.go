package testnet

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/p2pimg/p2pimg/node/client"
)

// Daemon is a p2pimg daemon running as its own process.
type Daemon struct {
	Bin     string
	Data    string
	Client  *client.Client
	cmd     *exec.Cmd
	log     *os.File
	done    chan struct{} // closed when the process has exited
	waitErr error         // its exit status, once done is closed
}

// StartDaemon runs `bin daemon --data data --open` on an ephemeral
// loopback port with mDNS off (plus any extra flags) and waits until it
// is ready.
func StartDaemon(ctx context.Context, bin, data string, extra ...string) (*Daemon, error) {
	data, err := filepath.Abs(data)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(data, "daemon.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(data, "p2pimg.sock")
	// --open: a daemon given no members list is a lone test host.
	args := []string{"daemon", "--data", data, "--socket", sock, "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--log-level", "debug", "--open"}
	cmd := exec.Command(bin, append(args, extra...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A test or bench that dies (a timeout, a panic) takes its daemons with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	d := &Daemon{Bin: bin, Data: data, Client: client.New(sock), cmd: cmd, log: logf, done: make(chan struct{})}
	go func() {
		d.waitErr = cmd.Wait()
		logf.Close()
		close(d.done)
	}()
	if err := d.waitReady(ctx); err != nil {
		d.Kill()
		return nil, err
	}
	return d, nil
}

func (d *Daemon) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := d.Client.Status(ctx)
		if err == nil && st.PID != d.Pid() {
			err = fmt.Errorf("another daemon (pid %d, data %s) answers on %s", st.PID, st.DataDir, d.Client.Socket())
		} else if err == nil && st.State == "ready" {
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("daemon %s exited while starting: %v (log: %s)", d.Data, d.waitErr, d.LogTail())
		case <-ctx.Done():
			return fmt.Errorf("daemon %s not ready: %v (log: %s)", d.Data, err, d.LogTail())
		case <-tick.C:
		}
	}
}

// Pid is the daemon's process id.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Stop sends SIGTERM and waits for a clean exit. Safe to call again.
func (d *Daemon) Stop() error {
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return d.waitErr
	case <-time.After(30 * time.Second):
		// SIGQUIT: the Go runtime writes every goroutine's stack to the
		// log, which shows what the stop waited for.
		d.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-d.done:
		case <-time.After(5 * time.Second):
			d.Kill()
		}
		return fmt.Errorf("daemon %s did not stop within 30s of SIGTERM (goroutines at the end of %s)", d.Data, filepath.Join(d.Data, "daemon.log"))
	}
}

// Kill sends SIGKILL and waits for the process to go. Safe to call again.
func (d *Daemon) Kill() {
	d.cmd.Process.Kill()
	<-d.done
}

// LogTail is the end of the daemon's log.
func (d *Daemon) LogTail() string {
	b, _ := os.ReadFile(filepath.Join(d.Data, "daemon.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// PeakRSS is the daemon's peak resident set size in bytes (VmHWM).
func (d *Daemon) PeakRSS() (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", d.Pid()))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmHWM for pid %d", d.Pid())
}
