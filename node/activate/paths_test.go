package activate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// resolveTrusted follows symlinks owned by root or the daemon's user, and
// refuses one owned by anyone else (who could point it anywhere, at any
// moment), wherever it lies on the path.
func TestResolveTrusted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("makes symlinks owned by another user: run as root")
	}
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.MkdirAll(filepath.Join(real, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", filepath.Join(dir, "mine")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(dir, "theirs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(dir, "theirs"), 4242, 4242); err != nil {
		t.Fatal(err)
	}
	got, err := resolveTrusted(filepath.Join(dir, "mine", "sub", "new", "x"))
	if want := filepath.Join(real, "sub", "new", "x"); err != nil || got != want {
		t.Fatalf("through a root-owned symlink: %q, %v; want %q", got, err, want)
	}
	if got, err := resolveTrusted(filepath.Join(dir, "theirs", "sub")); err == nil || !strings.Contains(err.Error(), "uid 4242") {
		t.Fatalf("through another user's symlink: %q, %v; want refused naming uid 4242", got, err)
	}
}
