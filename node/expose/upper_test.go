package expose

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/node/api"
)

// An upper directory's changes stop counting once a commit marks them,
// and count again after any write, removal, link or change of attributes
// since; a write while the commit reads the directory leaves them
// counted.
func TestUpperCommittedMark(t *testing.T) {
	tick := racyTick
	racyTick = 0 // the files here are made just before their mark
	defer func() { racyTick = tick }()
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, upper string)
	}{
		{"same-size rewrite", func(t *testing.T, upper string) { write(t, filepath.Join(upper, "etc", "app.conf"), "port=81\n") }},
		{"chmod", func(t *testing.T, upper string) { must(t, os.Chmod(filepath.Join(upper, "etc", "app.conf"), 0o600)) }},
		{"removal", func(t *testing.T, upper string) { must(t, os.Remove(filepath.Join(upper, "bin", "tool"))) }},
		{"hard link", func(t *testing.T, upper string) {
			must(t, os.Link(filepath.Join(upper, "bin", "tool"), filepath.Join(upper, "bin", "tool2")))
		}},
		{"fifo", func(t *testing.T, upper string) { must(t, unix.Mkfifo(filepath.Join(upper, "etc", "pipe"), 0o644)) }},
		{"new empty directory", func(t *testing.T, upper string) { must(t, os.Mkdir(filepath.Join(upper, "bin", "new"), 0o755)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, e, upper := upperFixture(t)
			n, size := x.Changes(e, "app:1")
			if n != 4 || size != int64(len("port=80\n")+len("v1")) {
				t.Fatalf("before the commit: %d paths, %d bytes; want 4, %d", n, size, len("port=80\n")+len("v1"))
			}
			must(t, x.markCommitted("app:1")())
			if n, size := x.Changes(e, "app:1"); n != 0 || size != 0 {
				t.Fatalf("after the commit: %d paths, %d bytes count; want none", n, size)
			}
			tc.change(t, upper)
			if n, _ := x.Changes(e, "app:1"); n == 0 {
				t.Fatalf("a %s after the commit does not count", tc.name)
			}
		})
	}
	t.Run("written while committed", func(t *testing.T) {
		x, e, upper := upperFixture(t)
		done := x.markCommitted("app:1")
		write(t, filepath.Join(upper, "etc", "app.conf"), "port=82\n")
		must(t, done())
		if n, _ := x.Changes(e, "app:1"); n != 4 {
			t.Fatalf("a write while the commit read the upper: %d paths count, want 4", n)
		}
	})
	t.Run("unreadable mark", func(t *testing.T) {
		x, e, _ := upperFixture(t)
		must(t, os.Mkdir(x.markFile("app:1"), 0o755))
		if n, _ := x.Changes(e, "app:1"); n != 4 {
			t.Fatalf("with a mark that cannot be read: %d paths count, want 4", n)
		}
	})
	t.Run("not overlaid", func(t *testing.T) {
		x, e, _ := upperFixture(t)
		e.Mode = api.ModeMaterialized
		if n, _ := x.Changes(e, "app:1"); n != 0 {
			t.Fatalf("a materialised exposure reports %d changed paths", n)
		}
	})
}

// upperFixture is an exposer whose layer app:1 has an upper directory
// with two directories and two files.
func upperFixture(t *testing.T) (*Exposer, *Exposure, string) {
	x := New(Config{DataDir: t.TempDir()})
	upper := x.UpperDir("app:1")
	write(t, filepath.Join(upper, "etc", "app.conf"), "port=80\n")
	write(t, filepath.Join(upper, "bin", "tool"), "v1")
	return x, &Exposure{Mode: api.ModeOverlay, Path: "/nonexistent", Exposed: true}, upper
}

func write(t *testing.T, p, s string) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(t, os.WriteFile(p, []byte(s), 0o644))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
