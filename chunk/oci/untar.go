package oci

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/p2pimg/p2pimg/chunk"
)

// ErrTooLarge: unpacking would write more than its limits allow.
var ErrTooLarge = errors.New("archive expands past the import limits")

// Limits bound what unpacking an archive may write.
type Limits struct {
	// MaxBytes caps the bytes written (file contents, all entries); 0: none.
	MaxBytes int64
	// MaxRatio caps bytes written per byte read from the archive (a
	// decompression bomb expands a thousandfold); 0: none. It is checked
	// once 1 MiB has been written.
	MaxRatio int64
	// Free, when set, is the free space where files are written; a file
	// that would leave less than Reserve is refused before it is written.
	Free    func() (int64, error)
	Reserve int64
}

// ratioGrace is what may be written before the ratio is checked (headers
// and small files compress well).
const ratioGrace = 1 << 20

// budget counts what an unpacking read and wrote against its limits.
type budget struct {
	ctx     context.Context
	lim     Limits
	in, out int64
}

// countingReader counts the archive bytes read (before decompression).
type countingReader struct {
	r io.Reader
	n *int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}

// reserve is called before a file of size n is written.
func (b *budget) reserve(name string, n int64) error {
	if b.lim.MaxBytes > 0 && b.out+n > b.lim.MaxBytes {
		return fmt.Errorf("%w: %s (%d bytes) would take it past %d bytes", ErrTooLarge, name, n, b.lim.MaxBytes)
	}
	if b.lim.Free != nil {
		free, err := b.lim.Free()
		if err == nil && free-n < b.lim.Reserve {
			return fmt.Errorf("%w: %s (%d bytes) would leave less than %d bytes free (%d free)", ErrTooLarge, name, n, b.lim.Reserve, free)
		}
	}
	return nil
}

// wrote is called as bytes are written (or discarded); it checks the
// ratio and whether the work was cancelled.
func (b *budget) wrote(n int) error {
	b.out += int64(n)
	if err := b.ctx.Err(); err != nil {
		return err
	}
	if b.lim.MaxBytes > 0 && b.out > b.lim.MaxBytes {
		return fmt.Errorf("%w: more than %d bytes", ErrTooLarge, b.lim.MaxBytes)
	}
	if b.lim.MaxRatio > 0 && b.out > ratioGrace && b.out > b.in*b.lim.MaxRatio {
		return fmt.Errorf("%w: %d bytes out of %d read, more than %dx (a decompression bomb?)", ErrTooLarge, b.out, b.in, b.lim.MaxRatio)
	}
	return nil
}

// copy copies r to w in bounded steps, counting against the budget.
func (b *budget) copy(w io.Writer, r io.Reader) error {
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if berr := b.wrote(n); berr != nil {
				return berr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// ExtractLayer verifies layer i against its digest, unpacks it (gzip or
// plain tar) into dst, which must exist and be empty, and checks the
// uncompressed tar against the config's diff_id. OCI whiteouts (.wh.
// files) are kept as files. Devices and fifos are skipped, hard links
// become copies. Owners are restored when owners is set. It stops when ctx
// ends or a limit is passed.
func (img *Image) ExtractLayer(ctx context.Context, i int, dst string, owners bool, lim Limits) (skipped []string, err error) {
	p := filepath.FromSlash(img.Layers[i])
	if d := img.Digest[i]; d != "" {
		if err := checkDigest(img.Root, p, d); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
	}
	f, err := OpenRegular(img.Root, p)
	if err != nil {
		return nil, fmt.Errorf("layer %d: %w", i+1, err)
	}
	defer f.Close()
	b := &budget{ctx: ctx, lim: lim}
	br := bufio.NewReader(countingReader{f, &b.in})
	var r io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
		defer gz.Close()
		r = gz
	}
	h := sha256.New()
	r = io.TeeReader(r, h)
	skipped, err = untar(b, r, dst, owners)
	if err == nil { // the diff_id covers the whole stream, padding included
		err = b.copy(io.Discard, r)
	}
	if err != nil {
		return skipped, fmt.Errorf("layer %d: %w", i+1, err)
	}
	if err := checkDiffID(h, img.DiffIDs[i]); err != nil {
		return skipped, fmt.Errorf("layer %d: %w", i+1, err)
	}
	return skipped, nil
}

func checkDiffID(h hash.Hash, want string) error {
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("uncompressed tar has digest %s, the config's diff_id says %s: the archive is corrupt or was tampered with", got, want)
	}
	return nil
}

// Untar unpacks a tar stream into dst through os.Root, within lim; it
// stops when ctx ends.
func Untar(ctx context.Context, r io.Reader, dst string, owners bool, lim Limits) (skipped []string, err error) {
	b := &budget{ctx: ctx, lim: lim}
	return untar(b, countingReader{r, &b.in}, dst, owners)
}

func untar(b *budget, r io.Reader, dst string, owners bool) (skipped []string, err error) {
	root, err := os.OpenRoot(dst)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	type dirTime struct {
		p string
		t time.Time
	}
	var dirs []dirTime
	tr := tar.NewReader(r)
	for {
		if err := b.ctx.Err(); err != nil {
			return skipped, err
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return skipped, fmt.Errorf("tar: %w", err)
		}
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		if name == "" {
			continue
		}
		if err := chunk.CheckPath(name); err != nil {
			return skipped, fmt.Errorf("tar entry %q: %v", h.Name, err)
		}
		if dir := path.Dir(name); dir != "." {
			if err := root.MkdirAll(dir, 0o755); err != nil {
				return skipped, fmt.Errorf("tar entry %q: %w", h.Name, err)
			}
		}
		mode := fs.FileMode(h.Mode) & fs.ModePerm
		if h.Mode&0o4000 != 0 {
			mode |= fs.ModeSetuid
		}
		if h.Mode&0o2000 != 0 {
			mode |= fs.ModeSetgid
		}
		if h.Mode&0o1000 != 0 {
			mode |= fs.ModeSticky
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return skipped, fmt.Errorf("tar entry %q: %w", h.Name, err)
			}
			root.Chmod(name, mode)
			dirs = append(dirs, dirTime{name, h.ModTime})
		case tar.TypeReg:
			err = b.writeFile(root, name, tr, h.Size, mode)
		case tar.TypeSymlink:
			root.Remove(name)
			err = root.Symlink(h.Linkname, name)
		case tar.TypeLink:
			target := strings.TrimPrefix(path.Clean("/"+h.Linkname), "/")
			var src *os.File
			if src, err = OpenRegular(root, target); err == nil {
				var fi os.FileInfo
				if fi, err = src.Stat(); err == nil {
					err = b.writeFile(root, name, src, fi.Size(), mode)
				}
				src.Close()
			}
		default:
			if h.Typeflag == 0 { // very old tars: a regular file
				err = b.writeFile(root, name, tr, h.Size, mode)
				break
			}
			skipped = append(skipped, name)
			continue
		}
		if err != nil {
			return skipped, fmt.Errorf("tar entry %q: %w", h.Name, err)
		}
		if owners {
			root.Lchown(name, h.Uid, h.Gid)
		}
		if h.Typeflag != tar.TypeSymlink && h.Typeflag != tar.TypeDir {
			root.Chtimes(name, h.ModTime, h.ModTime)
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- { // after their contents
		root.Chtimes(dirs[i].p, dirs[i].t, dirs[i].t)
	}
	return skipped, nil
}

func (b *budget) writeFile(root *os.Root, name string, r io.Reader, size int64, mode fs.FileMode) error {
	if err := b.reserve(name, size); err != nil {
		return err
	}
	root.Remove(name)
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := b.copy(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return root.Chmod(name, mode)
}
