package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/p2pimg/p2pimg/node"
	"github.com/p2pimg/p2pimg/node/cluster"
)

// loadClusterFiles reads the daemon's cluster file (default: an open
// cluster named "default"), then the PSK and members files that override
// its psk and members, at start and again on every reload.
func loadClusterFiles(clusterFile, pskFile, membersFile string) (*cluster.Config, error) {
	cc := cluster.Default()
	if clusterFile != "" {
		var err error
		if cc, err = cluster.Load(clusterFile); err != nil {
			return nil, err
		}
	}
	if pskFile != "" {
		k, err := cluster.ReadPSKFile(pskFile)
		if err != nil {
			return nil, usageError{fmt.Errorf("--psk: %w", err)}
		}
		cc.PSK = k
	}
	if membersFile != "" {
		m, err := cluster.ReadMembersFile(membersFile)
		if err != nil {
			return nil, usageError{fmt.Errorf("--members: %w", err)}
		}
		cc.Members = m
	}
	if pskFile != "" || membersFile != "" {
		if err := cc.Check(); err != nil {
			return nil, usageError{fmt.Errorf("--psk / --members with the cluster file: %w", err)}
		}
	}
	return cc, nil
}

// reloadOnHangup reloads the cluster files on every SIGHUP until ctx ends
// or stop is called. A refused reload is logged and the old config stays.
func reloadOnHangup(ctx context.Context, d *node.Daemon, log *slog.Logger) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				n := d.Node()
				if n == nil {
					log.Warn("SIGHUP: the node is still starting; cluster files not reloaded")
					continue
				}
				if _, err := n.ReloadCluster(ctx); err != nil {
					log.Error("SIGHUP: " + err.Error())
				}
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		cancel()
		<-done
	}
}
