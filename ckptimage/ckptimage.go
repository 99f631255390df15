// Package ckptimage stores a CRIU checkpoint of a function's handler (package checkpoint's
// image directory) like an image: the directory's files become an obd layer (a tar converted
// into an ext4 overlaybd layer by package convert, with its range table), pushed to the
// registry as an artifact whose subject is the function's image manifest (ociartifact), so a
// node that has the image can find its checkpoint and attach it lazily through bdd, reading
// only the pages a restore touches. It sits beside tracerec and traceartifact above the read
// path of docs/DESIGN.md: a registry client; the attach is its caller's (a client of bdd).
//
// Everything read back is untrusted: the artifact manifest is capped and checked against its
// descriptor, and Parse refuses one that is not exactly one overlaybd layer with its
// annotations (ErrBadArtifact).
package ckptimage

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/obdimage"
	"github.com/obdproject/obd/ociartifact"
)

const (
	// ArtifactType marks a checkpoint artifact among an image's referrers.
	ArtifactType = "application/vnd.obd.checkpoint.v1"
	// AnnotationCreated is when the checkpoint was taken (RFC 3339): the newest is chosen.
	AnnotationCreated = ocispec.AnnotationCreated
	// AnnotationCRIU is the version of the criu that dumped it: a restore needs a compatible one.
	AnnotationCRIU = "org.obdproject.checkpoint.criu"
	// AnnotationFunction names the function whose handler was checkpointed.
	AnnotationFunction = "org.obdproject.checkpoint.function"
	// MaxManifestBytes caps an artifact manifest.
	MaxManifestBytes = 64 << 10
	// MaxFiles and MaxBytes cap a checkpoint directory Push stores.
	MaxFiles = 4096
	MaxBytes = 4 << 30
)

// Errors.
var (
	// ErrBadArtifact: an artifact manifest that is not a checkpoint this package pushed.
	ErrBadArtifact = errors.New("ckptimage: bad checkpoint artifact")
	// ErrNoCheckpoint: the image has no checkpoint artifact (for the function).
	ErrNoCheckpoint = errors.New("ckptimage: no checkpoint")
)

// Info describes a checkpoint.
type Info struct {
	Function string
	CRIU     string
	Created  time.Time
}

// Checkpoint is a checkpoint artifact of an image.
type Checkpoint struct {
	Repository string             // where the layer blob is
	Artifact   ocispec.Descriptor // the artifact manifest
	Layer      obdimage.Layer     // the overlaybd layer of the checkpoint's files
	Info       Info
}

// Options configure Push.
type Options struct {
	// WorkDir holds the conversion's scratch files (required).
	WorkDir string
	// Registry configures the converter (it does not reach the registry: it writes a layout).
	Registry convert.RegistryOptions
}

// Push stores the checkpoint directory dir (regular files only, as criu writes them) as an obd
// layer and pushes it as a checkpoint artifact of img (its manifest the subject) into img's
// repository.
func Push(ctx context.Context, resolver remotes.Resolver, img obdimage.Image, dir string, info Info, opts Options) (Checkpoint, error) {
	if !images.IsManifestType(img.Manifest.MediaType) {
		return Checkpoint{}, fmt.Errorf("ckptimage: subject %s has media type %q, want an image manifest", img.Manifest.Digest, img.Manifest.MediaType)
	}
	if opts.WorkDir == "" {
		return Checkpoint{}, errors.New("ckptimage: no work dir")
	}
	work, err := os.MkdirTemp(opts.WorkDir, "ckpt-")
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ckptimage: %w", err)
	}
	defer os.RemoveAll(work)
	size, err := writeLayout(dir, filepath.Join(work, "src"))
	if err != nil {
		return Checkpoint{}, err
	}
	// ext4 of the files with room for the metadata; a sparse device, only what is written counts.
	vsize := max(int64(64<<20), (2*size+(16<<20))&^(1<<20-1))
	c, err := convert.New(convert.Options{WorkDir: filepath.Join(work, "convert"), VirtualSize: vsize, Registry: opts.Registry})
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ckptimage: %w", err)
	}
	dst := filepath.Join(work, "dst")
	if _, err := c.Convert(ctx, "oci:"+filepath.Join(work, "src")+":ckpt", "oci:"+dst+":ckpt"); err != nil {
		return Checkpoint{}, fmt.Errorf("ckptimage: convert: %w", err)
	}
	layer, layerDesc, err := convertedLayer(dst)
	if err != nil {
		return Checkpoint{}, err
	}
	pusher, err := resolver.Pusher(ctx, img.Repository)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ckptimage: push to %s: %w", img.Repository, err)
	}
	f, err := os.Open(blobPath(dst, layerDesc.Digest))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ckptimage: %w", err)
	}
	err = ociartifact.Push(ctx, pusher, img.Repository, layerDesc, f)
	f.Close()
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ckptimage: %w", err)
	}
	empty := ociartifact.EmptyConfig()
	if err := ociartifact.PushBytes(ctx, pusher, img.Repository, empty, ocispec.DescriptorEmptyJSON.Data); err != nil {
		return Checkpoint{}, fmt.Errorf("ckptimage: %w", err)
	}
	if info.Created.IsZero() {
		info.Created = time.Now()
	}
	annotations := map[string]string{AnnotationCreated: info.Created.UTC().Format(time.RFC3339Nano), AnnotationCRIU: info.CRIU,
		AnnotationFunction: info.Function}
	subject := ocispec.Descriptor{MediaType: img.Manifest.MediaType, Digest: img.Manifest.Digest, Size: img.Manifest.Size}
	m := ociartifact.Manifest{SchemaVersion: 2, MediaType: ocispec.MediaTypeImageManifest, ArtifactType: ArtifactType,
		Config: empty, Layers: []ocispec.Descriptor{layerDesc}, Subject: &subject, Annotations: annotations}
	data, err := jsonMarshal(m)
	if err != nil {
		return Checkpoint{}, err
	}
	artifact := ociartifact.Descriptor(ocispec.MediaTypeImageManifest, data)
	if err := ociartifact.PushBytes(ctx, pusher, img.Repository, artifact, data); err != nil {
		return Checkpoint{}, fmt.Errorf("ckptimage: %w", err)
	}
	artifact.ArtifactType, artifact.Annotations = ArtifactType, annotations
	if _, err := ociartifact.Attach(ctx, resolver, img.Repository, img.Manifest.Digest, artifact); err != nil {
		return Checkpoint{}, fmt.Errorf("ckptimage: %w", err)
	}
	return Checkpoint{Repository: img.Repository, Artifact: artifact, Layer: layer, Info: info}, nil
}

// Find returns the newest checkpoint artifact of img for function (any function when "").
func Find(ctx context.Context, resolver remotes.Resolver, img obdimage.Image, function string) (Checkpoint, error) {
	listed, err := ociartifact.Referrers(ctx, resolver, img.Repository, img.Manifest.Digest)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ckptimage: %w", err)
	}
	var candidates []ocispec.Descriptor
	for _, d := range listed {
		if d.ArtifactType == ArtifactType && (function == "" || d.Annotations[AnnotationFunction] == function) {
			candidates = append(candidates, d)
		}
	}
	// Newest first by the listing's annotation; the manifest's own is what counts after.
	slices.SortStableFunc(candidates, func(a, b ocispec.Descriptor) int {
		return -cmpCreated(a.Annotations[AnnotationCreated], b.Annotations[AnnotationCreated])
	})
	fetcher, err := resolver.Fetcher(ctx, img.Repository)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ckptimage: %w", err)
	}
	var errs []error
	for _, d := range candidates {
		data, err := ociartifact.ReadVerified(ctx, fetcher, d, MaxManifestBytes)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		c, err := Parse(data, img.Manifest.Digest)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if function != "" && c.Info.Function != function {
			continue
		}
		c.Repository, c.Artifact = img.Repository, d
		return c, nil
	}
	if len(errs) > 0 {
		return Checkpoint{}, fmt.Errorf("%w for %s@%s: %w", ErrNoCheckpoint, img.Repository, img.Manifest.Digest, errors.Join(errs...))
	}
	return Checkpoint{}, fmt.Errorf("%w for %s@%s (function %q)", ErrNoCheckpoint, img.Repository, img.Manifest.Digest, function)
}

// Get returns the checkpoint artifact of img whose manifest has digest artifact: a checkpoint
// pinned by whoever trusts it, whatever else the registry lists.
func Get(ctx context.Context, resolver remotes.Resolver, img obdimage.Image, artifact digest.Digest) (Checkpoint, error) {
	if err := artifact.Validate(); err != nil {
		return Checkpoint{}, fmt.Errorf("ckptimage: artifact digest %q: %w", artifact, err)
	}
	ref := img.Repository + "@" + artifact.String()
	_, desc, err := resolver.Resolve(ctx, ref)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ckptimage: %s: %w", ref, err)
	}
	fetcher, err := resolver.Fetcher(ctx, ref)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ckptimage: %w", err)
	}
	desc.Digest = artifact // the registry's word for the size only; the bytes must match the pin
	data, err := ociartifact.ReadVerified(ctx, fetcher, desc, MaxManifestBytes)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %s: %w", ErrBadArtifact, ref, err)
	}
	c, err := Parse(data, img.Manifest.Digest)
	if err != nil {
		return Checkpoint{}, err
	}
	c.Repository, c.Artifact = img.Repository, ociartifact.Descriptor(ocispec.MediaTypeImageManifest, data)
	return c, nil
}

// Parse reads a checkpoint artifact manifest of subject: exactly one overlaybd layer with its
// annotations, the artifact type, the subject and a creation time.
func Parse(data []byte, subject digest.Digest) (Checkpoint, error) {
	if len(data) > MaxManifestBytes {
		return Checkpoint{}, fmt.Errorf("%w: %d bytes, cap %d", ErrBadArtifact, len(data), MaxManifestBytes)
	}
	var m ociartifact.Manifest
	if err := ociartifact.DecodeStrictJSON(data, &m); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %v", ErrBadArtifact, err)
	}
	switch {
	case m.SchemaVersion != 2 || m.MediaType != ocispec.MediaTypeImageManifest:
		return Checkpoint{}, fmt.Errorf("%w: schemaVersion %d, mediaType %q", ErrBadArtifact, m.SchemaVersion, m.MediaType)
	case m.ArtifactType != ArtifactType:
		return Checkpoint{}, fmt.Errorf("%w: artifactType %q", ErrBadArtifact, m.ArtifactType)
	case m.Subject == nil || m.Subject.Digest != subject:
		return Checkpoint{}, fmt.Errorf("%w: not a checkpoint of %s", ErrBadArtifact, subject)
	case len(m.Layers) != 1:
		return Checkpoint{}, fmt.Errorf("%w: %d layers, want 1", ErrBadArtifact, len(m.Layers))
	}
	layers, err := obdimage.Layers(ocispec.Manifest{Layers: m.Layers})
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %w", ErrBadArtifact, err)
	}
	if layers[0].Digest != m.Layers[0].Digest || layers[0].Size != m.Layers[0].Size {
		return Checkpoint{}, fmt.Errorf("%w: the layer descriptor (%s, %d bytes) is not its overlaybd blob (%s, %d bytes)",
			ErrBadArtifact, m.Layers[0].Digest, m.Layers[0].Size, layers[0].Digest, layers[0].Size)
	}
	created, err := time.Parse(time.RFC3339Nano, m.Annotations[AnnotationCreated])
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: %s: %v", ErrBadArtifact, AnnotationCreated, err)
	}
	return Checkpoint{Layer: layers[0], Info: Info{Function: m.Annotations[AnnotationFunction], CRIU: m.Annotations[AnnotationCRIU], Created: created}}, nil
}

func cmpCreated(a, b string) int {
	ta, errA := time.Parse(time.RFC3339Nano, a)
	tb, errB := time.Parse(time.RFC3339Nano, b)
	switch {
	case errA != nil && errB != nil:
		return 0
	case errA != nil:
		return -1
	case errB != nil:
		return 1
	}
	return ta.Compare(tb)
}

// writeLayout writes the regular files of dir into a one-layer OCI image layout at layout
// (an uncompressed tar layer, tagged "ckpt"), the converter's input, and returns their size.
func writeLayout(dir, layout string) (int64, error) {
	blobs := filepath.Join(layout, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o700); err != nil {
		return 0, fmt.Errorf("ckptimage: %w", err)
	}
	tmp := filepath.Join(layout, "layer.tar")
	f, err := os.Create(tmp)
	if err != nil {
		return 0, fmt.Errorf("ckptimage: %w", err)
	}
	defer f.Close()
	h := digest.SHA256.Digester()
	tw := tar.NewWriter(io.MultiWriter(f, h.Hash()))
	var total int64
	files := 0
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		if d.IsDir() {
			return fmt.Errorf("%s: the checkpoint holds a directory", path)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return fmt.Errorf("%s: not a regular file", path)
		}
		if files++; files > MaxFiles {
			return fmt.Errorf("more than %d files", MaxFiles)
		}
		if total += info.Size(); total > MaxBytes {
			return fmt.Errorf("more than %d bytes", int64(MaxBytes))
		}
		// Owners and modes come along: a confined handler's images belong to root of its
		// user namespace and are readable by others (checkpoint.Dump, docs/CHECKPOINT.md);
		// nothing else is kept (no setuid, no write or execute bits).
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: d.Name(), Size: info.Size(), Mode: int64(info.Mode().Perm() & 0o644), ModTime: info.ModTime()}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			hdr.Uid, hdr.Gid = int(st.Uid), int(st.Gid)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		src, err := os.Open(path)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		return 0, fmt.Errorf("ckptimage: checkpoint %s: %w", dir, err)
	}
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("ckptimage: %w", err)
	}
	layerDigest := h.Digest()
	if err := os.Rename(tmp, blobPath(layout, layerDigest)); err != nil {
		return 0, fmt.Errorf("ckptimage: %w", err)
	}
	put := func(mediaType string, v any) (ocispec.Descriptor, error) {
		data, err := jsonMarshal(v)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		d := ociartifact.Descriptor(mediaType, data)
		return d, os.WriteFile(blobPath(layout, d.Digest), data, 0o600)
	}
	config, err := put(ocispec.MediaTypeImageConfig, ocispec.Image{Platform: ocispec.Platform{Architecture: "amd64", OS: "linux"},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layerDigest}}})
	if err != nil {
		return 0, fmt.Errorf("ckptimage: %w", err)
	}
	manifest, err := put(ocispec.MediaTypeImageManifest, ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest, Config: config,
		Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: layerDigest, Size: st.Size()}}})
	if err != nil {
		return 0, fmt.Errorf("ckptimage: %w", err)
	}
	manifest.Annotations = map[string]string{ocispec.AnnotationRefName: "ckpt"}
	index, err := jsonMarshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{manifest}})
	if err != nil {
		return 0, err
	}
	if err := os.WriteFile(filepath.Join(layout, "index.json"), index, 0o600); err != nil {
		return 0, fmt.Errorf("ckptimage: %w", err)
	}
	if err := os.WriteFile(filepath.Join(layout, ocispec.ImageLayoutFile), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o600); err != nil {
		return 0, fmt.Errorf("ckptimage: %w", err)
	}
	return total, nil
}

// convertedLayer returns the one overlaybd layer of the converted layout at layout.
func convertedLayer(layout string) (obdimage.Layer, ocispec.Descriptor, error) {
	var index ocispec.Index
	if err := readJSON(filepath.Join(layout, "index.json"), &index); err != nil {
		return obdimage.Layer{}, ocispec.Descriptor{}, err
	}
	if len(index.Manifests) != 1 {
		return obdimage.Layer{}, ocispec.Descriptor{}, fmt.Errorf("ckptimage: converted layout has %d manifests", len(index.Manifests))
	}
	var m ocispec.Manifest
	if err := readJSON(blobPath(layout, index.Manifests[0].Digest), &m); err != nil {
		return obdimage.Layer{}, ocispec.Descriptor{}, err
	}
	layers, err := obdimage.Layers(m)
	if err != nil || len(layers) != 1 {
		return obdimage.Layer{}, ocispec.Descriptor{}, fmt.Errorf("ckptimage: converted layout: %d layers, %v", len(layers), err)
	}
	return layers[0], m.Layers[0], nil
}

func blobPath(layout string, d digest.Digest) string {
	return filepath.Join(layout, "blobs", d.Algorithm().String(), d.Encoded())
}

func jsonMarshal(v any) ([]byte, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("ckptimage: %w", err)
	}
	return data, nil
}

// readJSON reads a file of a layout the converter wrote.
func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("ckptimage: %w", err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("ckptimage: %s: %w", path, err)
	}
	return nil
}

// LayerRef is the layer as sandbox/bddrootfs and `obd attach` take it:
// REPO@DIGEST:SIZE#TABLE@OFFSET.
func (c Checkpoint) LayerRef() string {
	s := fmt.Sprintf("%s@%s:%d", c.Repository, c.Layer.Digest, c.Layer.Size)
	if c.Layer.RangeTable != "" {
		s += "#" + c.Layer.RangeTable.String() + "@" + strconv.FormatInt(c.Layer.RangeTableOffset, 10)
	}
	return s
}
