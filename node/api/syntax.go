package api

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"unicode"

	"github.com/p2pimg/p2pimg/chunk"
)

var labelRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}=[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ParseLabel reads key=value.
func ParseLabel(s string) (string, string, error) {
	if !labelRE.MatchString(s) {
		return "", "", fmt.Errorf("label %q: want key=value (letters, digits, '.', '_', '-')", s)
	}
	k, v, _ := strings.Cut(s, "=")
	return k, v, nil
}

// ParseMap reads SRC=DST: SRC an absolute host path, DST a path inside the layer.
func ParseMap(s string) (src, dst string, err error) {
	src, dst, ok := strings.Cut(s, "=")
	dst = strings.TrimPrefix(dst, "/")
	if !ok || !filepath.IsAbs(src) || filepath.Clean(src) != src || src == "/" || len(src) > 4096 || strings.ContainsFunc(src, unicode.IsControl) {
		return "", "", fmt.Errorf("map %.80q: want SRC=DST with SRC an absolute, clean host path without control characters", s)
	}
	if err := chunk.CheckPath(dst); err != nil {
		return "", "", fmt.Errorf("map %.80q: DST: %v", s, err)
	}
	return src, dst, nil
}
