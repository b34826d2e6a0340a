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

// A symlink swapped in where checkout sets, or add reads, an entry's
// attributes leads nowhere outside the tree: a directory turned into a
// symlink out of it is refused, a file turned into a symlink gets the
// attributes itself (the kernel keeps no user. ones on a symlink), and
// the file outside keeps its own.
func TestXattrsThroughSwappedSymlinks(t *testing.T) {
	t.Parallel()
	outside := t.TempDir()
	victim := filepath.Join(outside, "f")
	must(t, os.WriteFile(victim, []byte("not the tree's"), 0o644))
	if err := unix.Lsetxattr(victim, "user.secret", []byte("outside"), 0); err != nil {
		t.Skipf("the temp dir keeps no user xattrs: %v", err)
	}
	dir := t.TempDir()
	must(t, os.Symlink(outside, filepath.Join(dir, "d")))      // was a directory
	must(t, os.Symlink(victim, filepath.Join(dir, "f")))       // was a file
	must(t, os.Symlink("d/f", filepath.Join(dir, "inside-f"))) // was a file, now a symlink staying in the tree
	root, err := os.OpenRoot(dir)
	must(t, err)
	defer root.Close()

	for _, path := range []string{"d/f", "f", "inside-f"} {
		e := &chunk.Entry{Path: path, Type: chunk.File, Xattrs: map[string][]byte{"user.secret": []byte("changed")}}
		if err := setXattrs(root, e, false); err == nil {
			t.Errorf("setting %s's attributes through a swapped-in symlink succeeded", path)
		}
		if got, err := readXattrs(root, path); err == nil && got["user.secret"] != nil {
			t.Errorf("%s: read the attributes of the file outside the tree: %q", path, got)
		}
	}
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(victim, "user.secret", buf)
	if err != nil || string(buf[:n]) != "outside" {
		t.Fatalf("the file outside the tree: user.secret %q, %v; want it untouched", buf[:max(n, 0)], err)
	}
}
