package node

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"
)

// sdNotify sends one state to systemd's notify socket (NOTIFY_SOCKET, a
// unix datagram socket; '@' starts an abstract name). With no socket it
// does nothing: the daemon was not started by systemd with Type=notify.
func sdNotify(socket, state string) error {
	if socket == "" {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socket, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("systemd notify socket %s: %w", socket, err)
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// watchdog tells systemd the daemon is alive every interval, as long as
// its API answers on the socket: a daemon whose API hangs stops sending,
// and systemd restarts it after WatchdogSec.
func (d *Daemon) watchdog(ctx context.Context, every time.Duration) error {
	cl := &http.Client{Timeout: every, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", d.cfg.Socket)
		},
	}}
	defer cl.CloseIdleConnections()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://p2pimg/v1/status", nil)
		resp, err := cl.Do(req)
		if err != nil {
			d.cfg.Log.Warn("watchdog: the API does not answer; not telling systemd we are alive", "err", err)
			continue
		}
		resp.Body.Close()
		if err := sdNotify(d.cfg.Notify, "WATCHDOG=1"); err != nil {
			d.cfg.Log.Warn("watchdog", "err", err)
		}
	}
}
