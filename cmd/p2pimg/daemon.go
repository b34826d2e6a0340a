package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/p2pimg/p2pimg/node"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/cluster"
	"github.com/p2pimg/p2pimg/node/faults"
	"github.com/p2pimg/p2pimg/node/registry"
	"github.com/p2pimg/p2pimg/policy"
)

func (a *app) daemonCmd() *cobra.Command {
	var data, level, format, clusterFile, metrics string
	var listen, peers []string
	var noMDNS, corrupt, stallServe, flood, missingServe bool
	var garbageServe int
	var announce, stall, clockOffset, goneAfter time.Duration
	var lazy bool
	var traceWindow time.Duration
	var maxUp, maxDown, configFile, root, expose, seatJournal, hostPolicy, socketGroup, pskFile, membersFile string
	var labels, allowedPaths []string
	var mirrorAddr, registriesFile, importMax, diskReserve string
	var importRatio int64
	var name, httpAddr string
	var pprof, open bool
	c := &cobra.Command{
		Use:   "daemon",
		Short: "Run this host's p2pimg daemon",
		Long: `Run this host's daemon: it opens the chunk store under --data and serves the
local API on a unix socket (default DATA/p2pimg.sock, only for this user).
It stops cleanly on SIGINT or SIGTERM. A cluster without a members list
(any host that reaches this one may join) is refused unless --open. With
--http it serves a read-only web view of the fleet. Run by systemd as a
Type=notify service, it reports readiness and answers the watchdog.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			if configFile != "" {
				if err := applyConfig(c, configFile); err != nil {
					return err
				}
			}
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
			up, err := parseRate("--max-upload", maxUp)
			if err != nil {
				return err
			}
			down, err := parseRate("--max-download", maxDown)
			if err != nil {
				return err
			}
			if m := api.Mode(expose); m != api.ModeAuto && m != api.ModeFUSE && m != api.ModeOverlay && m != api.ModeMaterialized {
				return usageError{fmt.Errorf("--expose %q: want auto, fuse, overlay or materialized", expose)}
			}
			lbl := map[string]string{}
			for _, l := range labels {
				k, v, err := api.ParseLabel(l)
				if err != nil {
					return usageError{fmt.Errorf("--label: %w", err)}
				}
				lbl[k] = v
			}
			var hostPolicyText string
			if hostPolicy != "" {
				b, err := os.ReadFile(hostPolicy)
				if err != nil {
					return usageError{fmt.Errorf("--host-policy: %w", err)}
				}
				if _, err := policy.ParseHost(b); err != nil {
					return usageError{fmt.Errorf("--host-policy %s: %w", hostPolicy, err)}
				}
				hostPolicyText = string(b)
			}
			cc, err := loadClusterFiles(clusterFile, pskFile, membersFile)
			if err != nil {
				return err
			}
			for _, p := range allowedPaths {
				if !filepath.IsAbs(p) {
					return usageError{fmt.Errorf("--allowed-paths %q: want an absolute path (under --root), e.g. /opt", p)}
				}
			}
			importBytes, err := humanize.ParseBytes(importMax)
			if err != nil || importBytes == 0 {
				return usageError{fmt.Errorf("--import-max-bytes %q: want a size, such as 64GiB", importMax)}
			}
			reserve, err := humanize.ParseBytes(diskReserve)
			if err != nil {
				return usageError{fmt.Errorf("--disk-reserve %q: want a size, such as 16MiB or 0", diskReserve)}
			}
			keep := int64(reserve)
			if keep == 0 {
				keep = -1 // none (0 is the store's default)
			}
			if importRatio < 0 {
				return usageError{fmt.Errorf("--import-max-ratio %d: want a positive number", importRatio)}
			}
			if cc.Open() && !open {
				return usageError{errors.New("refusing to run an open cluster (no members list: any host that reaches this one may join and is trusted with the catalogue): give --cluster FILE with members (see 'p2pimg cluster init --help') or --members FILE, or --open to run one anyway (a lab, a trusted LAN)")}
			}
			if mirrorAddr != "" {
				if _, _, err := net.SplitHostPort(mirrorAddr); err != nil {
					return usageError{fmt.Errorf("--registry %q: want HOST:PORT, e.g. 127.0.0.1:5000 (%v)", mirrorAddr, err)}
				}
			}
			ups := registry.Upstreams{}
			if registriesFile != "" {
				if ups, err = registry.LoadUpstreams(registriesFile); err != nil {
					return usageError{fmt.Errorf("--registries: %w", err)}
				}
			}
			d, err := node.NewDaemon(node.DaemonConfig{
				Config: node.Config{
					DataDir: data, Log: slog.New(h), Cluster: cc, Listen: listen, Peers: peers,
					MDNS: !noMDNS, AnnounceInterval: announce, StallTimeout: stall, GoneAfter: goneAfter,
					MaxUpload: up, MaxDownload: down, Root: root, AllowedPaths: allowedPaths, ImportMaxBytes: int64(importBytes), ImportMaxRatio: importRatio, DiskReserve: keep, Labels: lbl, Name: name, Expose: api.Mode(expose), Lazy: lazy, TraceWindow: traceWindow, HostPolicy: hostPolicyText,
					Registry: mirrorAddr, Upstreams: ups,
					Faults: testFaults(corrupt, stallServe, flood, seatJournal, clockOffset, garbageServe, missingServe),
					ReloadCluster: func() (*cluster.Config, error) {
						next, err := loadClusterFiles(clusterFile, pskFile, membersFile)
						if err == nil && next.Open() && !open {
							err = errors.New("the files now give no members list (an open cluster): refused, as at start without --open")
						}
						return next, err
					},
				},
				Socket: a.socket, SocketGroup: socketGroup, Metrics: metrics, HTTP: httpAddr, Pprof: pprof, Version: version,
				Notify: os.Getenv("NOTIFY_SOCKET"), Watchdog: watchdogInterval(),
			})
			if err != nil {
				return err
			}
			stop := reloadOnHangup(c.Context(), d, slog.New(h))
			defer stop()
			return d.Run(c.Context())
		},
	}
	c.Flags().StringVar(&configFile, "config", "", "TOML file with any of these flags as keys (e.g. data = \"/srv/p2pimg\", peer = [\"/ip4/...\"]); flags given on the command line win")
	c.Flags().StringVar(&data, "data", DefaultDataDir, "data directory (store, keys, socket)")
	c.Flags().StringVar(&level, "log-level", "info", "log level: debug, info, warn, error")
	c.Flags().StringVar(&format, "log-format", "text", "log format: text or json")
	c.Flags().StringVar(&clusterFile, "cluster", "", "cluster file (name, PSK, members, publishers); default: an open cluster named \"default\"")
	c.Flags().StringVar(&pskFile, "psk", "", "private-network key file (libp2p swarm key, or 64 hex digits): only hosts with the key connect; TCP only (QUIC is off); overrides the cluster file's psk")
	c.Flags().StringVar(&membersFile, "members", "", "file of the peer ids allowed in (one per line), enforced after the handshake; overrides the cluster file's members")
	c.Flags().StringSliceVar(&listen, "listen", nil, "libp2p listen multiaddrs (default /ip4/0.0.0.0/tcp/4001 and /ip4/0.0.0.0/udp/4001/quic-v1)")
	c.Flags().StringArrayVar(&peers, "peer", nil, "peer to keep connected, a multiaddr ending in /p2p/PEERID (repeatable)")
	c.Flags().BoolVar(&noMDNS, "no-mdns", false, "do not discover peers on the LAN with mDNS")
	c.Flags().StringVar(&metrics, "metrics", "", "serve Prometheus metrics (/metrics) on `HOST:PORT`")
	c.Flags().StringVar(&httpAddr, "http", "", "serve the web view of the fleet (read-only) and /metrics on `HOST:PORT`; port 0 picks a free one ('p2pimg web' prints the URL)")
	c.Flags().BoolVar(&pprof, "pprof", false, "also serve Go's profiles under /debug/pprof/ on the --http and --metrics addresses")
	c.Flags().BoolVar(&open, "open", false, "run even though the cluster has no members list (any host that reaches this one may join); without it such a daemon refuses to start")
	c.Flags().StringVar(&name, "name", "", "this host's name in status and the web view (default: the hostname)")
	c.Flags().DurationVar(&announce, "announce-interval", 10*time.Second, "how often to gossip this host's catalogue")
	c.Flags().DurationVar(&stall, "stall-timeout", 60*time.Second, "fail a fetch after this long without progress")
	c.Flags().DurationVar(&goneAfter, "gone-after", time.Hour, "show a host unheard for this long as gone (it shows as unreachable after 12 announce intervals); 'p2pimg cluster forget' drops it")
	c.Flags().StringVar(&maxUp, "max-upload", "", "cap on chunk bytes served per second, e.g. 50MB (default: none)")
	c.Flags().StringVar(&maxDown, "max-download", "", "cap on chunk bytes fetched per second, e.g. 100MB (default: none)")
	c.Flags().StringVar(&root, "root", "/", "directory that activation paths are relative to (a testnet gives each node its own)")
	c.Flags().DurationVar(&traceWindow, "trace-window", time.Minute, "after a lazy activation, record the chunks read for this long as its access trace (peers activating the same version fetch those first)")
	c.Flags().StringArrayVar(&allowedPaths, "allowed-paths", nil, "an absolute path (under --root) where activations may put layers (--at) and redirect host paths (--map SRC); repeatable; default: anywhere under --root")
	c.Flags().StringVar(&importMax, "import-max-bytes", "64GiB", "the most an import may unpack (it also leaves 256 MiB free on the data directory's disk)")
	c.Flags().StringVar(&diskReserve, "disk-reserve", "16MiB", "free space an add or fetch must leave on the data directory's disk, or it is refused before it writes (0: none)")
	c.Flags().Int64Var(&importRatio, "import-max-ratio", 200, "the most bytes an import may unpack per byte of archive read (a decompression bomb expands a thousandfold)")
	c.Flags().BoolVar(&lazy, "lazy", false, "fuse mode: a layer is active once its manifest is here; a chunk is fetched from peers when first read (verified first, EIO if none supplies it within 10 s), the rest in the background")
	c.Flags().StringVar(&expose, "expose", string(api.ModeAuto), "how activated layers appear: fuse (served from the store through FUSE, an overlay above it; root, /dev/fuse and overlayfs), overlay (an overlay on a checkout), materialized (a directory swapped in), or auto (the first of these that works)")
	c.Flags().StringVar(&mirrorAddr, "registry", "", "serve the OCI registry mirror (pull API) on this HOST:PORT, e.g. 127.0.0.1:5000 (default: off)")
	c.Flags().StringVar(&registriesFile, "registries", "", "TOML file of the upstream registries the mirror pulls from, by the name containerd sends as ?ns= (see README)")
	c.Flags().StringArrayVar(&labels, "label", nil, "host label key=value, announced to the cluster for --hosts key=value (repeatable)")
	c.Flags().BoolVar(&corrupt, "test-corrupt-serve", false, "TESTING ONLY: corrupt every chunk served")
	c.Flags().MarkHidden("test-corrupt-serve")
	c.Flags().BoolVar(&stallServe, "test-stall-serve", false, "TESTING ONLY: never answer chunk requests")
	c.Flags().MarkHidden("test-stall-serve")
	c.Flags().IntVar(&garbageServe, "test-garbage-serve", 0, "TESTING ONLY: answer chunk requests with items of this many random bytes")
	c.Flags().MarkHidden("test-garbage-serve")
	c.Flags().BoolVar(&missingServe, "test-missing-serve", false, "TESTING ONLY: answer every exchange request with not-here")
	c.Flags().MarkHidden("test-missing-serve")
	c.Flags().BoolVar(&flood, "test-gossip-flood", false, "TESTING ONLY: gossip as fast as possible")
	c.Flags().MarkHidden("test-gossip-flood")
	c.Flags().StringVar(&socketGroup, "socket-group", "", "a group whose members may use the API socket too (mode 0660); default: only this user")
	c.Flags().StringVar(&hostPolicy, "host-policy", "", "this host's policy `FILE` (TOML; replaces the one set with 'p2pimg policy set-host')")
	c.Flags().DurationVar(&clockOffset, "test-clock-offset", 0, "TESTING ONLY: shift this host's keeper clock")
	c.Flags().MarkHidden("test-clock-offset")
	c.Flags().StringVar(&seatJournal, "test-seat-journal", "", "TESTING ONLY: append every interval a seat grant was valid here to FILE")
	c.Flags().MarkHidden("test-seat-journal")
	return c
}

// watchdogInterval is how often to tell systemd the daemon is alive: half
// its WatchdogSec ($WATCHDOG_USEC, meant for this process when
// $WATCHDOG_PID is unset or ours); 0 without a watchdog.
func watchdogInterval() time.Duration {
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	us, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || us <= 0 {
		return 0
	}
	return time.Duration(us) * time.Microsecond / 2
}

// parseRate reads a bytes-per-second figure such as 50MB, 1GiB or 1000000.
func parseRate(flag, s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := humanize.ParseBytes(s)
	if err != nil || n == 0 {
		return 0, usageError{fmt.Errorf("%s %q: want bytes per second, such as 50MB or 1GiB", flag, s)}
	}
	return int64(n), nil
}

// applyConfig sets every flag named in a TOML file that the command line
// did not set. Keys are flag names; lists set repeatable flags.
func applyConfig(c *cobra.Command, path string) error {
	var m map[string]any
	if _, err := toml.DecodeFile(path, &m); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	for k, v := range m {
		f := c.Flags().Lookup(strings.ReplaceAll(k, "_", "-")) // allowed_paths is allowed-paths
		if f == nil || k == "config" || f.Hidden {
			return fmt.Errorf("config file %s: unknown setting %q (settings are the daemon's flag names; see `p2pimg daemon --help`)", path, k)
		}
		if f.Changed {
			continue // the command line wins
		}
		vals := []any{v}
		if list, ok := v.([]any); ok {
			vals = list
		}
		for _, x := range vals {
			if err := c.Flags().Set(f.Name, fmt.Sprint(x)); err != nil {
				return fmt.Errorf("config file %s: %s = %v: %w", path, k, x, err)
			}
		}
	}
	return nil
}

// testFaults is the hidden --test-* flags as faults (nil when none is set,
// as in production).
func testFaults(corrupt, stall, flood bool, seatJournal string, clockOffset time.Duration, garbage int, missing bool) *faults.Faults {
	if !corrupt && !stall && !flood && seatJournal == "" && clockOffset == 0 && garbage == 0 && !missing {
		return nil
	}
	return &faults.Faults{CorruptServe: corrupt, StallServe: stall, GossipFlood: flood, SeatJournal: seatJournal, ClockOffset: clockOffset,
		GarbageServe: garbage, MissingServe: missing}
}
