package layers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ipfs/go-cid"
	"github.com/p2pimg/p2pimg/chunk"
	"github.com/p2pimg/p2pimg/chunk/oci"
	"github.com/p2pimg/p2pimg/chunk/tree"
	"github.com/p2pimg/p2pimg/node/api"
	"github.com/p2pimg/p2pimg/node/gossip"
)

// Import reads a container image (a `docker save` tar, or an OCI image
// layout as a directory or a tar) and publishes one layer per image layer,
// each stacked on the one before; the top one is named req.Name (default:
// the image's own reference), the others NAME-layerK:TAG.
func (sv *Service) Import(ctx context.Context, req api.ImportRequest, emit api.Emit) (*api.ImportResult, error) {
	if !filepath.IsAbs(req.Path) {
		return nil, api.BadRequestf("import: path %q must be absolute", req.Path)
	}
	fsys, err := callerFS(ctx)
	if err != nil {
		return nil, err
	}
	defer fsys.Close()
	var fi os.FileInfo
	if err := fsys.Do(func() (err error) { fi, err = os.Stat(req.Path); return err }); err != nil {
		return nil, api.BadRequest(fmt.Errorf("import: %w", err))
	}
	var archive *os.File
	switch {
	case fi.IsDir() && fsys != nil:
		return nil, api.Forbidden(fmt.Errorf("import %s: only root imports an OCI layout directory (it is read with the daemon's rights); pack it into an archive first (tar -C %s -cf image.tar .) and import that", req.Path, req.Path))
	case !fi.IsDir():
		if err := fsys.Do(func() (err error) { archive, err = tree.OpenRegular(req.Path); return err }); err != nil {
			return nil, api.BadRequest(fmt.Errorf("import: %w", err))
		}
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
	img, err := openImage(req.Path, archive, work)
	if err != nil {
		return nil, err
	}
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
	defer sv.cfg.GC.Pin()()
	out := &api.ImportResult{}
	parent := cid.Undef
	for i := range img.Layers {
		ldir := filepath.Join(work, fmt.Sprintf("layer%d", i+1))
		if err := os.Mkdir(ldir, 0o755); err != nil {
			return nil, err
		}
		skipped, err := img.ExtractLayer(i, ldir, os.Geteuid() == 0)
		if err != nil {
			return nil, api.BadRequest(fmt.Errorf("import %s: %w", req.Path, err))
		}
		for _, s := range skipped {
			emit(api.Event{Warning: fmt.Sprintf("layer %d: skipped %s (devices and fifos are not stored)", i+1, s)})
		}
		res, err := tree.AddUpper(ctx, sv.cfg.Store, ldir, chunk.DefaultParams(), parent, progress(emit, fmt.Sprintf("layer %d of %d", i+1, len(img.Layers))))
		if err != nil {
			return nil, fmt.Errorf("import %s: layer %d: %w", req.Path, i+1, err)
		}
		lname := name
		if i < len(img.Layers)-1 {
			lname = chunk.Name{Repo: fmt.Sprintf("%s-layer%d", name.Repo, i+1), Tag: name.Tag}
		}
		l, err := sv.publish(ctx, lname, res.CID, res.Encoded, res.Manifest, gossip.Mapping{})
		if err != nil {
			return nil, fmt.Errorf("import %s: layer %d: %w", req.Path, i+1, err)
		}
		out.Layers = append(out.Layers, l)
		parent = res.CID
		os.RemoveAll(ldir)
	}
	if sv.cfg.Images != nil {
		warn, err := sv.cfg.Images.KeepImage(ctx, img.Dir, name)
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

// openImage reads the image at path: a layout directory as it is, or the
// archive (path, already open) unpacked under work first.
func openImage(path string, archive *os.File, work string) (*oci.Image, error) {
	dir := path
	if archive != nil {
		dir = filepath.Join(work, "archive")
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, fmt.Errorf("import: %w", err)
		}
		_, err := oci.Untar(archive, dir, false)
		if err != nil {
			return nil, api.BadRequest(fmt.Errorf("import %s: %w", path, err))
		}
	}
	img, err := oci.Open(dir)
	if err != nil {
		return nil, api.BadRequest(fmt.Errorf("import %s: %w", path, err))
	}
	return img, nil
}
