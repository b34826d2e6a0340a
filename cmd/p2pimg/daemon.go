package main

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/p2pimg/p2pimg/node"
)

func (a *app) daemonCmd() *cobra.Command {
	var data, level, format string
	c := &cobra.Command{
		Use:   "daemon",
		Short: "Run this host's p2pimg daemon",
		Long: `Run this host's daemon: it opens the chunk store under --data and serves the
local API on a unix socket (default DATA/p2pimg.sock, only for this user).
It stops cleanly on SIGINT or SIGTERM.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			var lv slog.Level
			if err := lv.UnmarshalText([]byte(level)); err != nil {
				return usageError{fmt.Errorf("--log-level %q: want debug, info, warn or error", level)}
			}
			opts := &slog.HandlerOptions{Level: lv}
			var h slog.Handler
			switch strings.ToLower(format) {
			case "text":
				h = slog.NewTextHandler(a.stderr, opts)
			case "json":
				h = slog.NewJSONHandler(a.stderr, opts)
			default:
				return usageError{fmt.Errorf("--log-format %q: want text or json", format)}
			}
			d, err := node.NewDaemon(node.DaemonConfig{DataDir: data, Socket: a.socket, Log: slog.New(h), Version: version})
			if err != nil {
				return err
			}
			return d.Run(c.Context())
		},
	}
	c.Flags().StringVar(&data, "data", DefaultDataDir, "data directory (store, keys, socket)")
	c.Flags().StringVar(&level, "log-level", "info", "log level: debug, info, warn, error")
	c.Flags().StringVar(&format, "log-format", "text", "log format: text or json")
	return c
}
