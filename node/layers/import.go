package layers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ipfs/go-cid"

	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/disk"
	"github.com/p2pimg/p2pimg/chunk/oci"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/gossip"
)

// Import limits when the config sets none, and the space an import leaves.
const (
	defaultImportMaxBytes = 64 << 30
	defaultImportMaxRatio = 200
	importReserve         = 256 << 20
)

// Import reads a container image (a `docker save` tar, or an OCI image
// layout as a directory or a tar) and publishes one layer per image layer,
// each stacked on the one before; the top one is named req.Name (default:
// the image's own reference), the others NAME-layerK:TAG. It stops when
// its caller goes away (ctx), holds gc off only while a layer's chunks are
// written and published, and unpacks within the import limits.
func (sv *Service) Import(ctx context.Context, req api.ImportRequest, emit api.Emit) (*api.ImportResult, error) {
	if !filepath.IsAbs(req.Path) {
		return nil, api.BadRequestf("import: path %q must be absolute", req.Path)
	}
	archive, err := sv.openArchive(ctx, req.Path)
	if err != nil {
		return nil, err
	}
	if archive != nil {
		defer archive.Close()
	}
	tmp := filepath.Join(sv.cfg.DataDir, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	work, err := os.MkdirTemp(tmp, "import-")
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	defer os.RemoveAll(work)
	img, err := sv.openImage(ctx, req.Path, archive, work)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	ref := req.Name
	if ref == "" {
		ref = img.Ref
	}
	name, err := chunk.ParseName(ref)
	if err != nil {
		return nil, api.BadRequest(fmt.Errorf("import %s: the image is saved as %q; give a layer name with --name NAME[:TAG] (%v)", req.Path, img.Ref, err))
	}
	if len(img.Layers) == 0 || len(img.Layers) > chunk.MaxStack {
		return nil, api.BadRequestf("import %s: %d layers; want 1 to %d", req.Path, len(img.Layers), chunk.MaxStack)
	}
	out := &api.ImportResult{}
	parent := cid.Undef
	for i := range img.Layers {
		lname := name
		if i < len(img.Layers)-1 {
			lname = chunk.Name{Repo: fmt.Sprintf("%s-layer%d", name.Repo, i+1), Tag: name.Tag}
		}
		l, id, err := sv.importLayer(ctx, img, i, work, lname, parent, emit)
		if err != nil {
			return nil, fmt.Errorf("import %s: %w", req.Path, err)
		}
		out.Layers = append(out.Layers, l)
		parent = id
	}
	if sv.cfg.Images != nil {
		warn, err := sv.cfg.Images.KeepImage(ctx, img.Root, name)
		if err != nil {
			return nil, fmt.Errorf("import %s: keep its blobs for the registry: %w", req.Path, err)
		}
		if warn != "" {
			emit(api.Event{Warning: warn})
		}
	}
	sv.cfg.Log.Info("image imported", "path", req.Path, "layer", name.String(), "layers", len(out.Layers))
	return out, nil
}

// openArchive opens the image at path with the caller's rights: a regular
// file (the archive, returned open), or a layout directory (nil; root only).
func (sv *Service) openArchive(ctx context.Context, path string) (*os.File, error) {
	fsys, err := callerFS(ctx)
	if err != nil {
		return nil, err
	}
	defer fsys.Close()
	var fi os.FileInfo
	if err := fsys.Do(func() (err error) { fi, err = os.Stat(path); return err }); err != nil {
		return nil, api.BadRequest(fmt.Errorf("import: %w", err))
	}
	switch {
	case fi.IsDir() && fsys != nil:
		return nil, api.Forbidden(fmt.Errorf("import %s: only root imports an OCI layout directory (it is read with the daemon's rights); pack it into an archive first (tar -C %s -cf image.tar .) and import that", path, path))
	case fi.IsDir():
		return nil, nil
	}
	var f *os.File
	if err := fsys.Do(func() (err error) { f, err = tree.OpenRegular(path); return err }); err != nil {
		return nil, api.BadRequest(fmt.Errorf("import: %w", err))
	}
	return f, nil
}

// importLayer unpacks layer i (verified) under work, then, with gc held
// off, chunks it and publishes it as name on parent.
func (sv *Service) importLayer(ctx context.Context, img *oci.Image, i int, work string, name chunk.Name, parent cid.Cid, emit api.Emit) (chunk.Layer, cid.Cid, error) {
	ldir := filepath.Join(work, fmt.Sprintf("layer%d", i+1))
	if err := os.Mkdir(ldir, 0o755); err != nil {
		return chunk.Layer{}, cid.Undef, err
	}
	defer os.RemoveAll(ldir)
	skipped, err := img.ExtractLayer(ctx, i, ldir, os.Geteuid() == 0, sv.importLimits())
	if err != nil {
		return chunk.Layer{}, cid.Undef, sv.importError(err)
	}
	for _, s := range skipped {
		emit(api.Event{Warning: fmt.Sprintf("layer %d: skipped %s (devices and fifos are not stored)", i+1, s)})
	}
	defer sv.cfg.GC.Pin()()
	res, err := tree.AddUpper(ctx, sv.cfg.Store, ldir, chunk.DefaultParams(), parent, progress(emit, fmt.Sprintf("layer %d of %d", i+1, len(img.Layers))))
	if err != nil {
		return chunk.Layer{}, cid.Undef, fmt.Errorf("layer %d: %w", i+1, err)
	}
	l, err := sv.publish(ctx, name, res.CID, res.Encoded, res.Manifest, gossip.Mapping{})
	if err != nil {
		return chunk.Layer{}, cid.Undef, fmt.Errorf("layer %d: %w", i+1, err)
	}
	return l, res.CID, nil
}

// importLimits bound an unpacking: the configured sizes, and the free
// space of the data directory's disk less a reserve.
func (sv *Service) importLimits() oci.Limits {
	lim := oci.Limits{MaxBytes: sv.cfg.ImportMaxBytes, MaxRatio: sv.cfg.ImportMaxRatio, Reserve: importReserve}
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = defaultImportMaxBytes
	}
	if lim.MaxRatio <= 0 {
		lim.MaxRatio = defaultImportMaxRatio
	}
	lim.Free = func() (int64, error) {
		u, err := disk.Space(sv.cfg.DataDir)
		return u.Free, err
	}
	return lim
}

// importError marks an unpacking error: a limit passed, or a bad archive.
func (sv *Service) importError(err error) error {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, oci.ErrTooLarge):
		return api.BadRequest(fmt.Errorf("%w (limits: daemon --import-max-bytes, --import-max-ratio)", err))
	}
	return api.BadRequest(err)
}

// openImage reads the image at path: a layout directory as it is, or the
// archive (path, already open) unpacked under work first.
func (sv *Service) openImage(ctx context.Context, path string, archive *os.File, work string) (*oci.Image, error) {
	dir := path
	if archive != nil {
		dir = filepath.Join(work, "archive")
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, fmt.Errorf("import: %w", err)
		}
		if _, err := oci.Untar(ctx, archive, dir, false, sv.importLimits()); err != nil {
			return nil, fmt.Errorf("import %s: %w", path, sv.importError(err))
		}
	}
	img, err := oci.Open(dir)
	if err != nil {
		return nil, api.BadRequest(fmt.Errorf("import %s: %w", path, err))
	}
	return img, nil
}
