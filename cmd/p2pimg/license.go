package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/p2pimg/p2pimg/license"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/testnet"
)

func (a *app) licenseCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "license",
		Short: "Licences and their seats: issue, install, claim, release, check",
		Long: `A licence grants N seats of a product across the fleet, each shared by at
most K consumers (VMs) on one host. It is signed by an issuer key that the
cluster file trusts (issuers = [...]). Seats are decided by the keepers
(keepers = [...] in the cluster file), a Raft group: a seat is never granted
twice, even under partitions, and a keeper minority grants nothing. A grant
is a lease the daemon renews; a crashed host's seat comes back after the
lease and a margin.`,
	}
	c.AddCommand(a.issuerKeyCmd(), a.issueCmd(), a.installCmd(), a.claimCmd(), a.releaseCmd(), a.checkCmd(), a.lsLicenseCmd(), a.keepersCmd())
	return c
}

func (a *app) issuerKeyCmd() *cobra.Command {
	var pubOf, out string
	c := &cobra.Command{
		Use:   "issuer-key [-o FILE]",
		Short: "Make an Ed25519 licence issuer key in a new 0600 file; its public key goes to the cluster file's issuers",
		Long: `Make an Ed25519 licence issuer key. It is written to a new file that only
its owner may read (-o FILE, default issuer.key; an existing file is never
overwritten); -o - prints it instead. The public key, printed on stderr, goes
to issuers = [...] in the cluster file. Keep the key itself off the hosts.`,
		Example: `  p2pimg license issuer-key -o /secure/issuer.key
  p2pimg license issuer-key --public /secure/issuer.key   # its public key again`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			if pubOf != "" {
				k, err := readIssuerKey(pubOf)
				if err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, license.PublicText(k.Public().(ed25519.PublicKey)))
				return nil
			}
			k, pemBytes, err := license.NewIssuerKey()
			if err != nil {
				return err
			}
			if out == "-" {
				a.stdout.Write(pemBytes)
			} else if err := writeSecret(out, pemBytes); err != nil {
				return err
			}
			where := "wrote " + out + "; "
			if out == "-" {
				where = ""
			}
			fmt.Fprintf(a.stderr, "%sissuer public key: %s\nadd it to issuers = [...] in the cluster file; keep the key itself off the hosts\n",
				where, license.PublicText(k.Public().(ed25519.PublicKey)))
			return nil
		},
	}
	c.Flags().StringVar(&pubOf, "public", "", "print the public key of this issuer key `FILE` instead")
	c.Flags().StringVarP(&out, "out", "o", "issuer.key", "new `FILE` for the key (mode 0600, never overwritten); - prints it to stdout")
	return c
}

func readIssuerKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	priv, err := license.ParseIssuerKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return priv, nil
}

func (a *app) issueCmd() *cobra.Command {
	var keyFile, product, expires string
	var seats, share int
	c := &cobra.Command{
		Use:   "issue --key issuer.key --product NAME --seats N [--share K] [--expires DATE]",
		Short: "Print a licence signed by the issuer key",
		Args:  exactArgs(0, "no arguments (everything is a flag)"),
		RunE: func(c *cobra.Command, _ []string) error {
			if keyFile == "" {
				if a.node > 0 {
					keyFile = testnet.IssuerKey(a.testnetDir)
				} else {
					return usageError{errors.New("license issue: --key FILE is required (from `p2pimg license issuer-key`)")}
				}
			}
			if product == "" || seats < 1 || share < 1 {
				return usageError{errors.New("license issue: --product NAME and --seats N (>= 1) are required; --share K must be >= 1")}
			}
			var exp time.Time
			if expires != "" {
				var err error
				if exp, err = time.Parse(time.DateOnly, expires); err != nil {
					if exp, err = time.Parse(time.RFC3339, expires); err != nil {
						return usageError{fmt.Errorf("license issue: --expires %q: want YYYY-MM-DD or RFC 3339", expires)}
					}
				}
			}
			priv, err := readIssuerKey(keyFile)
			if err != nil {
				return err
			}
			l, err := license.Issue(priv, product, seats, share, time.Now(), exp)
			if err != nil {
				return usageError{err}
			}
			fmt.Fprint(a.stdout, l.Text())
			return nil
		},
	}
	c.Flags().StringVar(&keyFile, "key", "", "issuer key file (with --node: the testnet's)")
	c.Flags().StringVar(&product, "product", "", "product name")
	c.Flags().IntVar(&seats, "seats", 0, "seats across the fleet")
	c.Flags().IntVar(&share, "share", 1, "consumers (VMs) on one host that may share one seat; 1 = exclusive")
	c.Flags().StringVar(&expires, "expires", "", "expiry date (YYYY-MM-DD, UTC); default never")
	return c
}

func (a *app) installCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "install FILE",
		Short: "Install a licence in the cluster (the keepers check and keep it)",
		Args:  exactArgs(1, "a licence file ('-' for stdin)"),
		RunE: func(c *cobra.Command, args []string) error {
			var b []byte
			var err error
			if args[0] == "-" {
				b, err = io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
			} else {
				b, err = os.ReadFile(args[0])
			}
			if err != nil {
				return err
			}
			info, err := a.client().InstallLicense(c.Context(), string(b))
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(info)
			}
			fmt.Fprintf(a.stdout, "installed licence %s: %s, %d seats, share %d, expires %s\n", info.ID, info.Product, info.Seats, info.Share, expiry(info.Expires))
			return nil
		},
	}
}

func expiry(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Format(time.DateOnly)
}

func (a *app) claimCmd() *cobra.Command {
	var consumer string
	var wait bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "claim PRODUCT --for CONSUMER-ID",
		Short: "Claim a seat of PRODUCT for a consumer (a VM) on this host; prints the grant",
		Long: `Claim a seat of PRODUCT for a consumer on this host. The daemon keeps the
grant alive (a lease it renews) until ` + "`license release`" + `. Without --wait a claim
is refused at once when no seat is free; with --wait it waits up to --timeout.
Before starting the consumer, check the token: ` + "`p2pimg license check TOKEN`.",
		Args: exactArgs(1, "a product name"),
		RunE: func(c *cobra.Command, args []string) error {
			if consumer == "" {
				return usageError{errors.New("license claim: --for CONSUMER-ID is required (the VM or container that uses the seat)")}
			}
			ctx, cancel := context.WithTimeout(c.Context(), timeout)
			defer cancel()
			g, err := a.client().Claim(ctx, api.ClaimRequest{Product: args[0], Consumer: consumer, Wait: wait})
			if errors.Is(err, context.DeadlineExceeded) && c.Context().Err() == nil {
				return fmt.Errorf("claim %s for %s: no seat within --timeout %s (the keepers may be unreachable, or every seat held with --wait): %w", args[0], consumer, timeout, err)
			}
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(g)
			}
			fmt.Fprintf(a.stdout, "granted seat %d of %s to %s: token %d, lease valid until %s (renewed by the daemon)\n",
				g.Seat, g.Product, consumer, g.Token, g.ValidUntil.Local().Format(time.TimeOnly))
			return nil
		},
	}
	c.Flags().StringVar(&consumer, "for", "", "consumer id: the VM or container that uses the seat")
	c.Flags().BoolVar(&wait, "wait", false, "wait for a free seat instead of failing at once")
	c.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "give up after this long")
	return c
}

func (a *app) releaseCmd() *cobra.Command {
	var consumer string
	var token uint64
	c := &cobra.Command{
		Use:   "release PRODUCT --for CONSUMER-ID | release --token TOKEN",
		Short: "Release a consumer's seat (the seat is freed when its last consumer goes)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			req := api.ReleaseRequest{Consumer: consumer, Token: token}
			if len(args) == 1 {
				req.Product = args[0]
			}
			if token == 0 && (req.Product == "" || consumer == "") {
				return usageError{errors.New("license release: give PRODUCT --for CONSUMER-ID, or --token TOKEN")}
			}
			r, err := a.client().Release(c.Context(), req)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(r)
			}
			if len(r.Freed) == 0 {
				fmt.Fprintln(a.stdout, "released (the seat stays held: other consumers on this host still use it, or it was not held)")
			}
			for _, g := range r.Freed {
				fmt.Fprintf(a.stdout, "freed seat %d of %s (token %d)\n", g.Seat, g.Product, g.Token)
			}
			return nil
		},
	}
	c.Flags().StringVar(&consumer, "for", "", "consumer id")
	c.Flags().Uint64Var(&token, "token", 0, "release the whole seat granted with this token")
	return c
}

func (a *app) checkCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check TOKEN",
		Short: "Exit 0 if the grant with TOKEN is current (call it before starting a VM); 1 with the reason if not",
		Args:  exactArgs(1, "a grant token"),
		RunE: func(c *cobra.Command, args []string) error {
			tok, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil || tok == 0 {
				return usageError{fmt.Errorf("license check: %q is not a grant token (a positive number)", args[0])}
			}
			r, err := a.client().Check(c.Context(), tok)
			if err != nil {
				return err
			}
			if a.json {
				if err := a.printJSON(r); err != nil {
					return err
				}
			} else if r.Current {
				fmt.Fprintf(a.stdout, "current: seat %d of %s on %s, valid until %s\n", r.Seat.Seat, r.Seat.Product, r.Seat.Host, r.Seat.ValidUntil.Local().Format(time.TimeOnly))
			}
			if !r.Current {
				return fmt.Errorf("not current: %s", r.Reason)
			}
			return nil
		},
	}
}

func (a *app) lsLicenseCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List licences, seats used and free, and every holder",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			l, err := a.client().Licenses(c.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(l)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PRODUCT\tSEATS\tUSED\tFREE\tSHARE\tEXPIRES\tLICENCE\tKEY")
			for _, li := range l.Licenses {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%s\t%s\n", li.Product, li.Seats, li.Used, li.Free, li.Share, expiry(li.Expires), li.ID, li.KeyID)
			}
			tw.Flush()
			if len(l.Holders) > 0 {
				fmt.Fprintln(a.stdout)
				tw = tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "PRODUCT\tSEAT\tHOST\tCONSUMERS\tTOKEN\tLEASE ENDS")
				for _, g := range l.Holders {
					fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\n", g.Product, g.Seat, g.Host, strings.Join(g.Consumers, ","), g.Token, g.ValidUntil.Local().Format(time.TimeOnly))
				}
				tw.Flush()
			}
			return nil
		},
	}
}

// writeSecret writes a private key to a new file only its owner can read;
// it never replaces an existing file.
func writeSecret(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return usageError{fmt.Errorf("-o %s: the file exists; a key is never written over another (remove it or pick a new name)", path)}
		}
		return fmt.Errorf("-o %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("-o %s: %w", path, err)
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		os.Remove(path)
		return fmt.Errorf("-o %s: %w", path, err)
	}
	return nil
}
