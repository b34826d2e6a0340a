package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/p2pimg/p2pimg/node/registry"
)

func (a *app) registryCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "registry",
		Short: "Point container runtimes at this host's registry mirror",
	}
	var dir, registries, mirror string
	hosts := &cobra.Command{
		Use:   "hosts containerd",
		Short: "Write containerd's hosts.toml for each upstream registry, with this host's mirror first",
		Long: `Write DIR/NAME/hosts.toml for each registry of the registries file (the
daemon's --registries), listing the mirror (the daemon's --registry) before
the upstream itself, so containerd pulls through p2pimg and falls back to
the registry when the mirror does not answer. An existing hosts.toml that
differs is kept beside it as hosts.toml.bak-TIME.`,
		Args: exactArgs(1, "the runtime (containerd)"),
		RunE: func(c *cobra.Command, args []string) error {
			if args[0] != "containerd" {
				return usageError{fmt.Errorf("registry hosts %q: only containerd is written; Docker and Podman are configured as the README shows", args[0])}
			}
			if _, _, err := net.SplitHostPort(mirror); err != nil {
				return usageError{fmt.Errorf("--mirror %q: want HOST:PORT as given to daemon --registry (%v)", mirror, err)}
			}
			ups, err := registry.LoadUpstreams(registries)
			if err != nil {
				return usageError{fmt.Errorf("--registries: %w", err)}
			}
			if len(ups) == 0 {
				return usageError{fmt.Errorf("--registries %s lists no registry ([registries.\"NAME\"])", registries)}
			}
			for _, ns := range ups.Names() {
				p, backup, err := writeHostsToml(dir, ns, ups[ns].URL(), mirror)
				if err != nil {
					return err
				}
				if backup != "" {
					fmt.Fprintf(a.stdout, "%s (previous one kept as %s)\n", p, backup)
				} else {
					fmt.Fprintln(a.stdout, p)
				}
			}
			return nil
		},
	}
	hosts.Flags().StringVar(&dir, "dir", "/etc/containerd/certs.d", "containerd's config_path for registry hosts")
	hosts.Flags().StringVar(&registries, "registries", "/etc/p2pimg/registries.toml", "the upstream registries file the daemon uses")
	hosts.Flags().StringVar(&mirror, "mirror", "127.0.0.1:5000", "this host's mirror address (daemon --registry)")
	c.AddCommand(hosts)
	return c
}

// hostsToml is containerd's hosts file for upstream registry ns: the
// mirror first (containerd adds ?ns=NAME), then the registry itself.
func hostsToml(server, mirror string) []byte {
	return fmt.Appendf(nil, `# Written by p2pimg registry hosts containerd: pull through this host's
# p2pimg mirror, then from the registry itself.
server = %q

[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, server, mirror)
}

func writeHostsToml(dir, ns, server, mirror string) (path, backup string, err error) {
	d := filepath.Join(dir, ns)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", "", fmt.Errorf("registry hosts: %w", err)
	}
	path = filepath.Join(d, "hosts.toml")
	want := hostsToml(server, mirror)
	old, err := os.ReadFile(path)
	switch {
	case err == nil && bytes.Equal(old, want):
		return path, "", nil
	case err == nil:
		backup = path + ".bak-" + time.Now().UTC().Format("20060102T150405Z")
		if err := os.WriteFile(backup, old, 0o644); err != nil {
			return "", "", fmt.Errorf("registry hosts: back up %s: %w", path, err)
		}
	case !os.IsNotExist(err):
		return "", "", fmt.Errorf("registry hosts: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, want, 0o644); err != nil {
		return "", "", fmt.Errorf("registry hosts: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", "", fmt.Errorf("registry hosts: %w", err)
	}
	return path, backup, nil
}
