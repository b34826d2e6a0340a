package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteHostsTomlBacksUp(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "docker.io"), 0o755)
	os.WriteFile(filepath.Join(dir, "docker.io", "hosts.toml"), []byte("server = \"https://old\"\n"), 0o644)
	p, backup, err := writeHostsToml(dir, "docker.io", "https://registry-1.docker.io", "127.0.0.1:5000")
	if err != nil || backup == "" {
		t.Fatalf("write: %v (backup %q)", err, backup)
	}
	got, _ := os.ReadFile(p)
	if !strings.Contains(string(got), `[host."http://127.0.0.1:5000"]`) || !strings.Contains(string(got), `server = "https://registry-1.docker.io"`) {
		t.Fatalf("hosts.toml:\n%s", got)
	}
	if old, _ := os.ReadFile(backup); string(old) != "server = \"https://old\"\n" {
		t.Fatalf("backup holds %q", old)
	}
	if _, backup, err = writeHostsToml(dir, "docker.io", "https://registry-1.docker.io", "127.0.0.1:5000"); err != nil || backup != "" {
		t.Fatalf("writing the same file again: %v, backup %q", err, backup)
	}
}
