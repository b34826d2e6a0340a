// Command bench measures p2pimg against the reference workloads and prints
// one table: `make bench` runs it. Each figure is the median of its runs,
// and every comparison (the sha256 ceiling, the targets) is made in the same
// run, on the same files.
package main

import (
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/testnet"
	"github.com/p2pimg/p2pimg/testnet/refimage"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type row struct{ what, value, target, verdict string }

// table is the bench's output. A figure that misses its target is marked,
// never an error: the bench fails only when a part cannot run. In a smoke
// run (small inputs, one round) the figures are not the reference ones, so
// a miss is marked as not enforced.
type table struct {
	rows  []row
	smoke bool
}

func (t *table) add(what, value, target string, ok *bool) {
	v := ""
	if ok != nil {
		v = "ok"
		if !*ok {
			v = "MISSED"
			if t.smoke {
				v = "missed (not enforced)"
			}
		}
	}
	t.rows = append(t.rows, row{what, value, target, v})
	fmt.Fprintf(os.Stderr, "  %s: %s\n", what, value)
}

func (t *table) print() {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEASURE\tVALUE\tTARGET\t")
	for _, r := range t.rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.what, r.value, r.target, r.verdict)
	}
	tw.Flush()
}

func check(b bool) *bool { return &b }

func median(xs []float64) float64 {
	slices.Sort(xs)
	return xs[len(xs)/2]
}

// rate runs fn n times and returns the median MB/s for size bytes.
func rate(n int, size int64, fn func() error) (float64, error) {
	var xs []float64
	for range n {
		start := time.Now()
		if err := fn(); err != nil {
			return 0, err
		}
		xs = append(xs, float64(size)/time.Since(start).Seconds()/1e6)
	}
	return median(xs), nil
}

// samples is how many samples the parts with a fixed count take (the
// others take -runs); -smoke lowers them.
var samples = struct {
	activations, claims, deliveries int
	burst                           time.Duration // of concurrent seat claims
}{10, 500, 10, 5 * time.Second}

func run(ctx context.Context) error {
	size := flag.Int64("size", 1<<30, "reference image size in bytes")
	bin := flag.String("bin", "bin/p2pimg", "p2pimg binary")
	fetcherBin := flag.String("fetcher-bin", "", "p2pimg binary of the fetcher in the garbage-peer memory figure (default -bin; an older build gives the before figure)")
	dir := flag.String("dir", "", "work directory (default: a new temporary one, removed after)")
	runs := flag.Int("runs", 5, "runs per figure (the median is reported)")
	only := flag.String("only", "", "run only these parts, comma-separated: chunk, add, update, fetch, fanout, activate, seats, layers, badpeers, garbage, catalog, fleet, registry, regfan, view")
	catLayers := flag.Int("catalog-layers", 4200, "layers one host publishes into 3 for the catalogue part")
	fleet := flag.Int("fleet", 32, "daemons of the fleet part")
	fleetLayers := flag.Int("fleet-layers", 10000, "tiny layers one of them publishes in the fleet part")
	fanSize := flag.Int64("fanout-size", 256<<20, "image size for the fan-out part")
	viewSize := flag.Int64("view-size", 4<<30, "image size for the fuse view part (lazy activation, reads through the view)")
	fanRuns := flag.String("fanout", "50mbit:4,8,16;400mbit:4", "fan-out rows: per link rate (tc tbf), the fetcher counts; the kill and join rows run at the first rate")
	fanChurn := flag.Int("fanout-churn", 8, "fetchers in the fan-out rows with a host killed and 4 joining halfway (0: none)")
	fanProfile := flag.String("fanout-profile", "", "directory for CPU profiles of the seed and one fetcher and a timeline of every link's bytes during each fan-out")
	fanHTTP := flag.Bool("fanout-http", true, "time one HTTP server to N curl clients beside the fan-out rows")
	badSize := flag.Int64("badpeers-size", 256<<20, "image size for the stalled- and lying-peer part")
	smoke := flag.Bool("smoke", false, "a quick check that every part runs (`make bench-smoke`): unless set otherwise, -size 64 MiB, -runs 1, -fanout-size and -badpeers-size 32 MiB and fewer samples; targets not enforced")
	regfanSize := flag.Int64("regfan-size", 1<<30, "image size for the registry fan-out part (4 hosts pull through their mirrors)")
	regfanRate := flag.String("regfan-rate", "400mbit", "link rate of the registry fan-out part")
	regfanJobs := flag.Int("regfan-jobs", 3, "layers each client of the registry fan-out part pulls at once (containerd's CRI and Docker default to 3, skopeo to 6; 1: one after another)")
	regfanBase := flag.String("regfan-base", "", "a second p2pimg binary whose mirrors the registry fan-out part times in the same runs, taking turns with -bin (a before figure)")
	regfanProfile := flag.String("regfan-profile", "", "directory for CPU profiles of the 4 mirrors and a timeline of every link's bytes during each registry fan-out through the mirrors")
	role := flag.String("role", "", "internal: run as a sender for the ceiling measurements, the registry fan-out's upstream or a puller")
	flag.Parse()
	switch *role {
	case "":
	case "upstream":
		return serveUpstream(*dir, *size)
	case "pull":
		return pullRole(flag.Args(), *regfanJobs)
	default:
		return serveRole(*role, *size)
	}
	if *smoke {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range map[string]any{"size": int64(64 << 20), "runs": 1, "fanout-size": int64(32 << 20), "badpeers-size": int64(32 << 20), "regfan-size": int64(64 << 20),
			"catalog-layers": 200, "fleet": 8, "fleet-layers": 300, "view-size": int64(64 << 20),
			"fanout": "50mbit:4,8;400mbit:4", "fanout-churn": 4} {
			if !set[name] {
				flag.Set(name, fmt.Sprint(v))
			}
		}
		samples.activations, samples.claims, samples.deliveries, samples.burst = 3, 50, 3, time.Second
	}
	began := time.Now()
	want := func(part string) bool { return *only == "" || strings.Contains(","+*only+",", ","+part+",") }
	if _, err := os.Stat(*bin); err != nil {
		return fmt.Errorf("binary %s: %w (run `make build` first)", *bin, err)
	}
	abs, _ := filepath.Abs(*bin)
	*bin = abs
	for _, d := range []string{*fanProfile, *regfanProfile} { // written to by curl and the timelines
		if d != "" {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "p2pimg-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	var base, clustered, scattered string
	if want("chunk") || want("add") || want("update") || want("fetch") {
		fmt.Fprintf(os.Stderr, "writing the reference image (%d MiB) and its updates in %s\n", *size>>20, *dir)
		var err error
		if base, clustered, scattered, err = refimage.Files(*dir, *size, 1); err != nil {
			return err
		}
	}
	t := &table{smoke: *smoke}
	if want("chunk") || want("add") {
		if err := benchChunking(ctx, t, base, *size, *runs); err != nil {
			return err
		}
	}
	if want("add") {
		if err := benchAdd(ctx, t, *bin, *dir, base, *size, *runs); err != nil {
			return err
		}
	}
	if want("update") {
		if err := benchUpdates(ctx, t, *bin, *dir, base, clustered, scattered, *size); err != nil {
			return err
		}
	}
	if want("fetch") {
		if err := benchFetch(ctx, t, *bin, *dir, base, clustered, *size, *runs); err != nil {
			return err
		}
	}
	if want("activate") {
		if err := benchActivation(ctx, t, *bin, *dir); err != nil {
			return err
		}
	}
	if want("badpeers") {
		if err := benchBadPeers(ctx, t, *bin, *dir, *badSize); err != nil {
			return err
		}
		if err := benchGossipFlood(ctx, t, *bin, *dir); err != nil {
			return err
		}
	}
	if want("garbage") {
		fb := *fetcherBin
		if fb == "" {
			fb = *bin
		}
		if err := benchGarbageRSS(ctx, t, *bin, fb, *dir, *badSize, *runs); err != nil {
			return err
		}
	}
	if want("view") {
		if err := benchView(ctx, t, *bin, *dir, *viewSize); err != nil {
			return err
		}
	}
	if want("layers") {
		if err := benchLayers(ctx, t, *bin, *dir, *size); err != nil {
			return err
		}
	}
	if want("catalog") {
		if err := benchCatalogue(ctx, t, *bin, *dir, *catLayers); err != nil {
			return err
		}
	}
	if want("fleet") {
		if err := benchFleet(ctx, t, *bin, *dir, *fleet, *fleetLayers); err != nil {
			return err
		}
	}
	if want("registry") {
		if err := benchRegistry(ctx, t, *bin, *dir, *size); err != nil {
			return err
		}
	}
	if want("regfan") {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		o := regfanOpts{bin: *bin, base: *regfanBase, rate: *regfanRate, profile: *regfanProfile, size: *regfanSize, runs: min(*runs, 3), jobs: *regfanJobs}
		if o.base != "" {
			if o.base, err = filepath.Abs(o.base); err != nil {
				return err
			}
		}
		if err := benchRegistryFanOut(ctx, t, self, *dir, o); err != nil {
			return err
		}
	}
	if want("seats") {
		if err := benchSeats(ctx, t, *bin, *dir); err != nil {
			return err
		}
	}
	if want("fanout") {
		img := filepath.Join(*dir, "fanout", "fan.img")
		os.MkdirAll(filepath.Dir(img), 0o755)
		f, err := os.Create(img)
		if err != nil {
			return err
		}
		err = refimage.Write(f, *fanSize, 7)
		f.Close()
		if err != nil {
			return err
		}
		o, err := parseFanOut(*fanRuns)
		if err != nil {
			return err
		}
		o.churn, o.profile, o.http = *fanChurn, *fanProfile, *fanHTTP
		if err := benchFanOut(ctx, t, *bin, *dir, img, o); err != nil {
			return err
		}
	}
	if *smoke {
		fmt.Printf("\np2pimg bench -smoke: %d MiB reference image, %d cores, %d run(s), %s in all;\n"+
			"a check that each part runs: small inputs, so the figures are not the reference ones and no target is enforced\n\n",
			*size>>20, runtime.NumCPU(), *runs, time.Since(began).Round(time.Second))
	} else {
		fmt.Printf("\np2pimg bench: %d MiB reference image, %d cores, median of %d runs\n\n", *size>>20, runtime.NumCPU(), *runs)
	}
	t.print()
	return nil
}

var sha256Rate float64

func benchChunking(ctx context.Context, t *table, path string, size int64, runs int) error {
	fmt.Fprintln(os.Stderr, "chunking and hashing")
	readAll := func(fn func(io.Reader) error) func() error {
		return func() error {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			return fn(f)
		}
	}
	var err error
	sha256Rate, err = rate(runs, size, readAll(func(r io.Reader) error {
		_, err := io.Copy(sha256.New(), r)
		return err
	}))
	if err != nil {
		return err
	}
	t.add("crypto/sha256, one goroutine (the reference)", fmt.Sprintf("%.0f MB/s", sha256Rate), "", nil)
	fixed, _ := chunk.NewParams(chunk.Fixed, 64<<10, chunk.SHA256)
	b3, _ := chunk.NewParams(chunk.CDC, 64<<10, chunk.BLAKE3)
	for _, c := range []struct {
		name string
		p    chunk.Params
	}{{"cdc 64K sha2-256", chunk.DefaultParams()}, {"fixed 64K sha2-256", fixed}, {"cdc 64K blake3", b3}} {
		for _, procs := range []int{1, runtime.NumCPU()} {
			old := runtime.GOMAXPROCS(procs)
			r, err := rate(runs, size, readAll(func(rd io.Reader) error {
				return chunk.Split(ctx, rd, c.p, func(chunk.Chunk) error { return nil })
			}))
			runtime.GOMAXPROCS(old)
			if err != nil {
				return err
			}
			what := fmt.Sprintf("chunk+hash %s, %d core(s)", c.name, procs)
			if procs > 1 && c.p.Hash == chunk.SHA256 {
				t.add(what, fmt.Sprintf("%.0f MB/s = %.2fx sha256", r, r/sha256Rate), ">= 1.0x sha256", check(r >= sha256Rate))
			} else {
				t.add(what, fmt.Sprintf("%.0f MB/s = %.2fx sha256", r, r/sha256Rate), "", nil)
			}
		}
	}
	return nil
}

func benchAdd(ctx context.Context, t *table, bin, dir, base string, size int64, runs int) error {
	fmt.Fprintln(os.Stderr, "p2pimg add, end to end")
	for _, mode := range []string{"cdc", "fixed"} {
		var rates []float64
		var peak int64
		for i := range runs {
			data := filepath.Join(dir, fmt.Sprintf("add-%s-%d", mode, i))
			d, err := testnet.StartDaemon(ctx, bin, data)
			if err != nil {
				return err
			}
			start := time.Now()
			_, err = d.Client.Add(ctx, api.AddRequest{Name: "ref:base", Path: base, Chunking: mode}, nil)
			el := time.Since(start)
			rss, rerr := d.PeakRSS()
			if serr := d.Stop(); err == nil {
				err = serr
			}
			os.RemoveAll(data)
			if err != nil {
				return err
			}
			if rerr != nil {
				return rerr
			}
			rates = append(rates, float64(size)/el.Seconds()/1e6)
			peak = max(peak, rss)
		}
		r := median(rates)
		t.add("p2pimg add, "+mode+" (daemon process, fresh store)", fmt.Sprintf("%.0f MB/s = %.2fx sha256", r, r/sha256Rate), ">= 0.4x sha256", check(r >= 0.4*sha256Rate))
		t.add("daemon peak RSS during add, "+mode, fmt.Sprintf("%d MiB", peak>>20), "<= 200 MiB", check(peak <= 200<<20))
	}
	return nil
}

func benchUpdates(ctx context.Context, t *table, bin, dir, base, clustered, scattered string, size int64) error {
	fmt.Fprintln(os.Stderr, "new bytes stored by each update")
	for _, m := range []struct{ mode, size string }{{"cdc", "64K"}, {"fixed", "64K"}, {"cdc", "8K"}, {"cdc", "4K"}} {
		data := filepath.Join(dir, "upd-"+m.mode+m.size)
		d, err := testnet.StartDaemon(ctx, bin, data)
		if err != nil {
			return err
		}
		add := func(name, path string) (api.AddResult, error) {
			return d.Client.Add(ctx, api.AddRequest{Name: name, Path: path, Chunking: m.mode, ChunkSize: m.size}, nil)
		}
		if _, err = add("ref:base", base); err == nil {
			for _, u := range []struct {
				name, path string
				kind       refimage.Update
			}{{"ref:clustered", clustered, refimage.Clustered}, {"ref:scattered", scattered, refimage.Scattered}} {
				var res api.AddResult
				if res, err = add(u.name, u.path); err != nil {
					break
				}
				pct := 100 * float64(res.NewBytes) / float64(size)
				what := fmt.Sprintf("new bytes, %s, %s %s", u.kind, m.mode, m.size)
				if u.kind == refimage.Clustered && m.mode == "cdc" && m.size == "64K" {
					t.add(what, fmt.Sprintf("%.2f%% of the image", pct), "<= 3%", check(pct <= 3))
				} else {
					t.add(what, fmt.Sprintf("%.2f%% of the image", pct), "", nil)
				}
			}
		}
		if serr := d.Stop(); err == nil {
			err = serr
		}
		os.RemoveAll(data)
		if err != nil {
			return err
		}
	}
	return nil
}
