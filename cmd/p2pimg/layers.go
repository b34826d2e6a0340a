package main

import (
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
)

func (a *app) addCmd() *cobra.Command {
	var req api.AddRequest
	var policyFile string
	c := &cobra.Command{
		Use:   "add NAME[:TAG] PATH",
		Short: "Chunk a file or directory into a layer and print its manifest CID",
		Long: `Chunk a file (a disk image) or a directory tree into a layer named NAME[:TAG]
(tag "latest" if none). The daemon reads PATH itself. Chunks already stored
are not written again. Devices, sockets and fifos are skipped and listed.

Chunking: a single .img or .raw file uses fixed 64K blocks (disk images
change in place); everything else uses content-defined chunking (FastCDC,
min/avg/max 16K/64K/256K), where insertions move at most two boundaries.`,
		Example: `  p2pimg add ubuntu-base:24.04 /srv/images/ubuntu
  p2pimg add win2022:2026-11 /srv/images/win2022.raw --chunking fixed --chunk-size 64K`,
		Args: exactArgs(2, "a layer name and a path"),
		RunE: func(c *cobra.Command, args []string) error {
			if _, err := chunk.ParseName(args[0]); err != nil {
				return usageError{err}
			}
			if req.Chunking != "" && req.Chunking != string(chunk.CDC) && req.Chunking != string(chunk.Fixed) {
				return usageError{fmt.Errorf("--chunking %q: want cdc or fixed", req.Chunking)}
			}
			if err := checkChunking(req); err != nil {
				return usageError{err}
			}
			path, err := filepath.Abs(args[1])
			if err != nil {
				return err
			}
			req.Name, req.Path = args[0], path
			if policyFile != "" {
				b, err := os.ReadFile(policyFile)
				if err != nil {
					return usageError{fmt.Errorf("--policy: %w", err)}
				}
				req.Policy = string(b)
			}
			on, done := a.events("add " + args[0])
			res, err := a.client().Add(c.Context(), req, on)
			done()
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(res)
			}
			fmt.Fprintln(a.stdout, res.Layer.CID)
			fmt.Fprintf(a.stderr, "added %s: %s in %d files/dirs, %d chunks (%s), %s new\n",
				res.Layer.Name, humanize.IBytes(uint64(res.Layer.Size)), res.Layer.Entries, res.Layer.Chunks,
				res.Layer.Chunking, humanize.IBytes(uint64(res.NewBytes)))
			if len(res.Skipped) > 0 {
				fmt.Fprintf(a.stderr, "skipped %d path(s) that layers cannot hold (listed above)\n", len(res.Skipped))
			}
			return nil
		},
	}
	c.Flags().StringVar(&req.Chunking, "chunking", "", "cdc or fixed (default: fixed for .img/.raw files, cdc otherwise)")
	c.Flags().StringVar(&req.ChunkSize, "chunk-size", "", "average chunk size (cdc) or block size (fixed), a power of two: 4K to 8M")
	c.Flags().StringVar(&policyFile, "policy", "", "layer policy `FILE` (TOML; see 'p2pimg policy --help')")
	c.Flags().StringVar(&req.Product, "product", "", "licensed product the layer needs: activating it claims a seat of it on each host first")
	c.Flags().StringVar(&req.Hash, "hash", "", "content hash: sha2-256 (default) or blake3")
	return c
}

func (a *app) layersCmd() *cobra.Command {
	var all bool
	c := &cobra.Command{
		Use:   "layers",
		Short: "List this host's layers (--all: the cluster's, with who holds them)",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			if all {
				return a.printCatalog(c)
			}
			ls, err := a.client().Layers(c.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(layersJSON(ls))
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tSIZE\tCHUNKS\tCHUNKING\tCID")
			for _, l := range ls {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", l.Name, l.State, humanize.IBytes(uint64(l.Size)), l.Chunks, l.Chunking, l.CID)
			}
			return tw.Flush()
		},
	}
	c.Flags().BoolVar(&all, "all", false, "show the whole cluster's layers and which hosts hold them")
	return c
}

func (a *app) checkoutCmd() *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "checkout NAME[:TAG] DIR",
		Short: "Write a layer's files into a directory",
		Long: `Write a complete layer's files into DIR (created if absent): byte-identical
contents, modes, symlinks, times, and holes where the source was zero. Owners
are restored when the daemon runs as root. DIR must be empty unless --force,
which replaces the layer's paths and leaves other files alone.`,
		Args: exactArgs(2, "a layer name and a directory"),
		RunE: func(c *cobra.Command, args []string) error {
			if _, err := chunk.ParseName(args[0]); err != nil {
				return usageError{err}
			}
			dir, err := filepath.Abs(args[1])
			if err != nil {
				return err
			}
			on, done := a.events("checkout " + args[0])
			res, err := a.client().Checkout(c.Context(), api.CheckoutRequest{Name: args[0], Dir: dir, Force: force}, on)
			done()
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(res)
			}
			fmt.Fprintf(a.stdout, "checked out %s (%s) into %s\n", res.Layer.Name, humanize.IBytes(uint64(res.Layer.Size)), res.Dir)
			return nil
		},
	}
	c.Flags().BoolVar(&force, "force", false, "write into a non-empty directory, replacing the layer's paths")
	return c
}

func (a *app) rmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME[:TAG]",
		Short: "Forget a layer name (its chunks go at the next gc)",
		Args:  exactArgs(1, "a layer name"),
		RunE: func(c *cobra.Command, args []string) error {
			if _, err := chunk.ParseName(args[0]); err != nil {
				return usageError{err}
			}
			if err := a.client().Remove(c.Context(), args[0]); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(map[string]string{"removed": args[0]})
			}
			fmt.Fprintf(a.stdout, "removed %s (run `p2pimg gc` to free its chunks)\n", args[0])
			return nil
		},
	}
}

func (a *app) gcCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "gc",
		Short: "Remove chunks and manifests that no kept layer references",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			res, err := a.client().GC(c.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(res)
			}
			fmt.Fprintf(a.stdout, "removed %d chunks (%s) and %d manifests; %d chunks kept; %s of disk reclaimed\n",
				res.RemovedChunks, humanize.IBytes(uint64(res.RemovedBytes)), res.RemovedManifests, res.KeptChunks, humanize.IBytes(uint64(res.ReclaimedBytes)))
			if res.RemovedViews > 0 {
				fmt.Fprintf(a.stdout, "removed %d unused view checkout(s) (%s)\n", res.RemovedViews, humanize.IBytes(uint64(res.RemovedViewBytes)))
			}
			return nil
		},
	}
}

func (a *app) verifyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "verify",
		Short: "Re-hash every stored chunk; remove corrupt ones and mark their layers incomplete",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			on, done := a.events("verify")
			res, err := a.client().Verify(c.Context(), on)
			done()
			if err != nil {
				return err
			}
			if a.json {
				if err := a.printJSON(res); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(a.stdout, "checked %d chunks: %d corrupt\n", res.Checked, len(res.Corrupt))
				for _, id := range res.Corrupt {
					fmt.Fprintf(a.stdout, "  removed corrupt chunk %s\n", id)
				}
				for _, l := range res.LayersAffected {
					fmt.Fprintf(a.stdout, "  layer %s is now incomplete: fetch it again\n", l)
				}
			}
			if len(res.Corrupt) > 0 {
				return fmt.Errorf("verify found %d corrupt chunk(s)", len(res.Corrupt))
			}
			return nil
		},
	}
}

func (a *app) statsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "stats",
		Short: "Show chunks, logical and stored bytes, the dedup ratio, and the packs' allocated and dead bytes",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			st, err := a.client().Stats(c.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(st)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "layers\t%d\n", st.Layers)
			fmt.Fprintf(tw, "chunks\t%d\n", st.Chunks)
			fmt.Fprintf(tw, "logical bytes\t%s\t(%d)\n", humanize.IBytes(uint64(st.LogicalBytes)), st.LogicalBytes)
			fmt.Fprintf(tw, "stored bytes\t%s\t(%d)\n", humanize.IBytes(uint64(st.StoredBytes)), st.StoredBytes)
			fmt.Fprintf(tw, "dedup ratio\t%.2fx\n", st.DedupRatio)
			fmt.Fprintf(tw, "pack disk\t%s\t(%d allocated)\n", humanize.IBytes(uint64(st.AllocatedBytes)), st.AllocatedBytes)
			fmt.Fprintf(tw, "dead bytes\t%s\t(%d; in packs but no kept chunk's: gc gives them back)\n", humanize.IBytes(uint64(st.DeadBytes)), st.DeadBytes)
			fmt.Fprintf(tw, "view checkouts\t%s\t(%d; overlay-mode copies under views/, beside the store)\n", humanize.IBytes(uint64(st.ViewBytes)), st.ViewBytes)
			fmt.Fprintf(tw, "disk deltas\t%s\t(%d; blocks written into activated disk images, under delta/)\n", humanize.IBytes(uint64(st.DeltaBytes)), st.DeltaBytes)
			fmt.Fprintf(tw, "overlay uppers\t%s\t(%d; files written into activated trees, under overlay/)\n", humanize.IBytes(uint64(st.UpperBytes)), st.UpperBytes)
			return tw.Flush()
		},
	}
}

func (a *app) splitCmd() *cobra.Command {
	var common string
	c := &cobra.Command{
		Use:   "split A B [C ...] --common NAME[:TAG]",
		Short: "Move the files identical in all the images into a common layer; republish each as a thin layer on it",
		Long: `Create the common layer NAME[:TAG] with the files (and symlinks) identical in
all the given images, and publish new versions of the images that hold only
their own files, stacked on it. Each new version checks out byte-identical
to the image it replaces. Run it again after the same change was applied to
all of them to fold that change into a new common version.`,
		Args: minArgs(2, "two or more layer names"),
		RunE: func(c *cobra.Command, args []string) error {
			if common == "" {
				return usageError{fmt.Errorf("split: --common NAME[:TAG] is required")}
			}
			r, err := a.client().Split(c.Context(), api.SplitRequest{Layers: args, Common: common})
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(r)
			}
			fmt.Fprintf(a.stdout, "common layer %s %s: %d entries, %s\n", r.Common.Name, r.Common.CID, r.Common.Entries, humanize.IBytes(uint64(r.Common.Size)))
			for _, l := range r.Layers {
				fmt.Fprintf(a.stdout, "  %s %s: %d entries of its own, %s\n", l.Name, l.CID, l.Entries, humanize.IBytes(uint64(l.Size)))
			}
			return nil
		},
	}
	c.Flags().StringVar(&common, "common", "", "name of the common layer to create")
	return c
}

func (a *app) commitCmd() *cobra.Command {
	var base, upper, activation string
	c := &cobra.Command{
		Use:   "commit (--base NAME[:TAG] --upper DIR | --activation NAME[:TAG]) NAME2[:TAG]",
		Short: "Capture an overlayfs upper directory, or an activated layer's local changes, as a new layer",
		Long: `Capture DIR, an overlayfs upper directory (or any directory of changes), as
the layer NAME2[:TAG] stacked on the base: files and directories as they are,
removals (character devices 0/0) and opaque directories (xattr
trusted.overlay.opaque=y) as OCI whiteouts, .wh. files as they are. A commit
that changes a path the base's layer policy locks is refused.

With --activation, capture what was written into a layer active on this host
(its overlay's changes and its disk images' block-level deltas) as NAME2[:TAG]
on top of the version exposed. A disk image keeps every chunk no write touched,
so only the changed parts are new; the changes then count as committed (until
the next write), and deactivate, a move or another version no longer refuses
them. A path layers cannot hold (a fifo, socket or device) is skipped and
listed, and the changed files then still count.`,
		Args: exactArgs(1, "the new layer's name"),
		RunE: func(c *cobra.Command, args []string) error {
			req := api.CommitRequest{Name: args[0], Base: base, Activation: activation}
			switch {
			case activation != "" && (base != "" || upper != ""):
				return usageError{fmt.Errorf("commit: give --activation, or --base and --upper, not both")}
			case activation == "" && (base == "" || upper == ""):
				return usageError{fmt.Errorf("commit: --base NAME[:TAG] and --upper DIR, or --activation NAME[:TAG], are required")}
			case upper != "":
				dir, err := filepath.Abs(upper)
				if err != nil {
					return err
				}
				req.Upper = dir
			}
			on, done := a.events("commit " + args[0])
			r, err := a.client().Commit(c.Context(), req, on)
			done()
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(r)
			}
			on2 := base
			if activation != "" {
				on2 = activation + " as exposed"
			}
			fmt.Fprintf(a.stdout, "%s %s on %s: %d entries, %d new chunks, %s new\n", r.Layer.Name, r.Layer.CID, on2, r.Layer.Entries, r.NewChunks, humanize.IBytes(uint64(r.NewBytes)))
			if len(r.Skipped) > 0 {
				fmt.Fprintf(a.stderr, "skipped %d path(s) that layers cannot hold (listed above)", len(r.Skipped))
				if activation != "" {
					fmt.Fprint(a.stderr, ": the changed files still count as local changes")
				}
				fmt.Fprintln(a.stderr)
			}
			return nil
		},
	}
	c.Flags().StringVar(&base, "base", "", "the layer the upper directory was over")
	c.Flags().StringVar(&upper, "upper", "", "the overlayfs upper directory")
	c.Flags().StringVar(&activation, "activation", "", "a layer active on this host: commit what was written into it")
	return c
}

func (a *app) rebaseCmd() *cobra.Command {
	var onto string
	c := &cobra.Command{
		Use:   "rebase NAME[:TAG] --onto BASE[:TAG]",
		Short: "Re-point a thin layer at a new version of its base (refused where both changed the same path)",
		Args:  exactArgs(1, "a layer name"),
		RunE: func(c *cobra.Command, args []string) error {
			if onto == "" {
				return usageError{fmt.Errorf("rebase: --onto BASE[:TAG] is required")}
			}
			l, err := a.client().Rebase(c.Context(), args[0], onto)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(l)
			}
			fmt.Fprintf(a.stdout, "%s %s now on %s\n", l.Name, l.CID, onto)
			return nil
		},
	}
	c.Flags().StringVar(&onto, "onto", "", "the new base layer")
	return c
}

func (a *app) importCmd() *cobra.Command {
	var name string
	c := &cobra.Command{
		Use:   "import FILE [--name NAME[:TAG]]",
		Short: "Make stacked layers of a container image: a `docker save` tar or an OCI image layout (directory or tar)",
		Args:  exactArgs(1, "an image archive or layout directory"),
		RunE: func(c *cobra.Command, args []string) error {
			p, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			on, done := a.events("import " + args[0])
			r, err := a.client().Import(c.Context(), api.ImportRequest{Path: p, Name: name}, on)
			done()
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(r)
			}
			for _, l := range r.Layers {
				fmt.Fprintf(a.stdout, "%s %s: %d entries, %s\n", l.Name, l.CID, l.Entries, humanize.IBytes(uint64(l.Size)))
			}
			return nil
		},
	}
	c.Flags().StringVar(&name, "name", "", "name of the top layer (default: the image's own reference)")
	return c
}

func (a *app) commonCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "common A B [C ...]",
		Short: "Report what images share: identical files (count, bytes, share of each) and shared chunk bytes",
		Args:  minArgs(2, "two or more layer names"),
		RunE: func(c *cobra.Command, args []string) error {
			for _, n := range args {
				if _, err := chunk.ParseName(n); err != nil {
					return usageError{err}
				}
			}
			r, err := a.client().Common(c.Context(), args)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(r)
			}
			fmt.Fprintf(a.stdout, "identical in all %d: %d files (%s), %d entries in all\n", len(args), r.Files, humanize.IBytes(uint64(r.FileBytes)), r.Entries)
			fmt.Fprintf(a.stdout, "chunks used by all: %s\n", humanize.IBytes(uint64(r.ChunkBytes)))
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LAYER\tFILE BYTES\tCOMMON SHARE")
			for i, n := range r.Layers {
				fmt.Fprintf(tw, "%s\t%s\t%.1f%%\n", n, humanize.IBytes(uint64(r.Sizes[i])), 100*r.Share[i])
			}
			return tw.Flush()
		},
	}
}

// checkChunking reads --chunking, --chunk-size and --hash as the daemon
// will, so a bad value is a usage error before anything is sent.
func checkChunking(req api.AddRequest) error {
	hash, err := chunk.ParseHash(req.Hash)
	if err != nil {
		return fmt.Errorf("--hash: %w", err)
	}
	if req.ChunkSize == "" {
		return nil
	}
	size, err := chunk.ParseSize(req.ChunkSize)
	if err != nil {
		return fmt.Errorf("--chunk-size: %w", err)
	}
	modes := []chunk.Mode{chunk.Mode(req.Chunking)}
	if req.Chunking == "" { // the daemon picks one by the input: either may do
		modes = []chunk.Mode{chunk.Fixed, chunk.CDC}
	}
	var errs []error
	for _, mode := range modes {
		if _, err := chunk.NewParams(mode, size, hash); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == len(modes) {
		return fmt.Errorf("--chunk-size %s: %w", req.ChunkSize, errs[0])
	}
	return nil
}

// layerJSON is a layer as `layers --json` prints it: its publication time
// as RFC 3339, as everywhere else (the store keeps unix nanoseconds).
type layerJSON struct {
	chunk.Layer
	Published time.Time `json:"published,omitzero"`
}

func layersJSON(ls []chunk.Layer) []layerJSON {
	out := []layerJSON{}
	for _, l := range ls {
		lj := layerJSON{Layer: l}
		if l.Published != 0 {
			lj.Published = time.Unix(0, l.Published).UTC()
		}
		out = append(out, lj)
	}
	return out
}
