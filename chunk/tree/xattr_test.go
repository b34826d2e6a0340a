package tree

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/p2pimg/p2pimg/chunk"
)

// Hard links and extended attributes survive add and checkout: the later
// names of an inode become links to the first (stored once), the kept
// attributes come back, overlayfs's own are left out.
func TestHardLinksAndXattrs(t *testing.T) {
	t.Parallel()
	src := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(src, "d"), 0o755))
	f := filepath.Join(src, "d", "f")
	must(t, os.WriteFile(f, []byte("linked content"), 0o644))
	must(t, os.Link(f, filepath.Join(src, "a-link")))
	must(t, os.Link(f, filepath.Join(src, "z-link")))
	if err := unix.Lsetxattr(f, "user.p2pimg.test", []byte("v1"), 0); err != nil {
		t.Skipf("the temp dir keeps no user xattrs: %v", err)
	}
	must(t, unix.Lsetxattr(filepath.Join(src, "d"), "user.dir", []byte{}, 0))
	overlay := os.Geteuid() == 0 && unix.Lsetxattr(f, "trusted.overlay.origin", []byte("x"), 0) == nil

	out, res := addAndCheckout(t, openStore(t), src, chunk.DefaultParams())
	links := map[string]string{}
	for _, e := range res.Manifest.Entries {
		links[e.Path] = e.Link
	}
	// a-link sorts first: it is the inode's first name, the others link to it
	if links["a-link"] != "" || links["d/f"] != "a-link" || links["z-link"] != "a-link" {
		t.Fatalf("links in the manifest: %v", links)
	}
	var first syscall.Stat_t
	must(t, syscall.Stat(filepath.Join(out, "a-link"), &first))
	for _, p := range []string{"d/f", "z-link"} {
		var st syscall.Stat_t
		must(t, syscall.Stat(filepath.Join(out, p), &st))
		if st.Ino != first.Ino || st.Nlink != 3 {
			t.Fatalf("%s checked out: inode %d (nlink %d), want %d shared by 3", p, st.Ino, st.Nlink, first.Ino)
		}
	}
	buf := make([]byte, 16)
	n, err := unix.Lgetxattr(filepath.Join(out, "z-link"), "user.p2pimg.test", buf)
	if err != nil || string(buf[:n]) != "v1" {
		t.Fatalf("user.p2pimg.test checked out: %q, %v", buf[:n], err)
	}
	if _, err := unix.Lgetxattr(filepath.Join(out, "d"), "user.dir", nil); err != nil {
		t.Fatalf("user.dir on the directory: %v", err)
	}
	if overlay {
		if _, err := unix.Lgetxattr(filepath.Join(out, "d", "f"), "trusted.overlay.origin", nil); err == nil {
			t.Fatal("overlayfs's own attribute was kept")
		}
	}
}
