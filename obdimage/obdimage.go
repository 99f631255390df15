// Package obdimage reads an overlaybd image from its registry: it resolves a reference
// (registry/repo:tag or @sha256:...) through a containerd resolver (hosts.toml and credentials
// are the resolver's), chooses the platform manifest of an index, checks that every layer is an
// overlaybd blob (the imagelabels annotations) and returns the blobs, bottom first, with their
// range tables, and the image's config. It sits above the read path of docs/DESIGN.md, where a
// client of bdd (obd-lambda's bddrootfs, tracerec) turns a reference into the layer stack it
// attaches; it links no fetcher, daemon or transport.
//
// Everything read is untrusted: manifests, indexes and configs are capped in size and checked
// against their descriptors before they are parsed, and a layer whose annotations do not parse
// is refused with ErrNotOverlaybd.
package obdimage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/ociartifact"
)

// Caps on what is read, as containerd's own.
const (
	MaxIndexBytes    = 4 << 20
	MaxManifestBytes = 4 << 20
	MaxConfigBytes   = 16 << 20
	// MaxLayers bounds an image's layers (lsmt stacks fewer still).
	MaxLayers = 256
)

// Errors, each wrapped with what was wrong.
var (
	// ErrNotOverlaybd: an image with a layer that is not an overlaybd blob, or none.
	ErrNotOverlaybd = errors.New("obdimage: not an overlaybd image")
	// ErrBadContent: a manifest, index or config that does not match its descriptor, is over
	// its cap, or does not parse.
	ErrBadContent = errors.New("obdimage: bad registry content")
	// ErrNoPlatform: an index without a manifest for the platform.
	ErrNoPlatform = errors.New("obdimage: no manifest for this platform")
)

// Layer is one overlaybd blob of an image.
type Layer struct {
	Digest           digest.Digest
	Size             int64
	RangeTable       digest.Digest // "" when the blob has none
	RangeTableOffset int64
}

// Image is an overlaybd image as its registry holds it.
type Image struct {
	Repository string             // e.g. registry.example.com/app: where its blobs are
	Manifest   ocispec.Descriptor // the platform manifest: the subject of its artifacts
	Layers     []Layer            // bottom first
	Config     ocispec.ImageConfig
}

// Blobs returns the image's layer blobs as descriptors (digest and size).
func (img Image) Blobs() []ocispec.Descriptor {
	out := make([]ocispec.Descriptor, len(img.Layers))
	for i, l := range img.Layers {
		out[i] = ocispec.Descriptor{Digest: l.Digest, Size: l.Size}
	}
	return out
}

// Repository returns the repository of ref ("host/app:v1" → "host/app"), the form bdd's
// blobs take.
func Repository(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("obdimage: image reference %q: %w", ref, err)
	}
	return reference.TrimNamed(named).String(), nil
}

// Resolve resolves ref in its registry and reads the image (Read). platform chooses the
// manifest of an index; platforms.Default() when nil.
func Resolve(ctx context.Context, resolver remotes.Resolver, ref string, platform platforms.MatchComparer) (Image, error) {
	if _, err := Repository(ref); err != nil {
		return Image{}, err
	}
	name, desc, err := resolver.Resolve(ctx, ref)
	if err != nil {
		return Image{}, fmt.Errorf("obdimage: resolve %s: %w", ref, err)
	}
	return Read(ctx, resolver, name, desc, platform)
}

// Read reads the image whose manifest or index at ref is desc.
func Read(ctx context.Context, resolver remotes.Resolver, ref string, desc ocispec.Descriptor, platform platforms.MatchComparer) (Image, error) {
	if platform == nil {
		platform = platforms.Default()
	}
	repo, err := Repository(ref)
	if err != nil {
		return Image{}, err
	}
	fetcher, err := resolver.Fetcher(ctx, ref)
	if err != nil {
		return Image{}, fmt.Errorf("obdimage: %s: %w", ref, err)
	}
	if images.IsIndexType(desc.MediaType) {
		var index ocispec.Index
		if err := FetchJSON(ctx, fetcher, desc, MaxIndexBytes, &index); err != nil {
			return Image{}, err
		}
		var best *ocispec.Descriptor
		for i, m := range index.Manifests {
			if m.Platform == nil || !images.IsManifestType(m.MediaType) || !platform.Match(*m.Platform) {
				continue
			}
			if best == nil || platform.Less(*m.Platform, *best.Platform) {
				best = &index.Manifests[i]
			}
		}
		if best == nil {
			return Image{}, fmt.Errorf("%w: %s@%s (%s)", ErrNoPlatform, ref, desc.Digest, platforms.DefaultString())
		}
		desc = *best
	}
	if !images.IsManifestType(desc.MediaType) {
		return Image{}, fmt.Errorf("%w: %s@%s: media type %q is not an image manifest or index", ErrBadContent, ref, desc.Digest, desc.MediaType)
	}
	var manifest ocispec.Manifest
	if err := FetchJSON(ctx, fetcher, desc, MaxManifestBytes, &manifest); err != nil {
		return Image{}, err
	}
	layers, err := Layers(manifest)
	if err != nil {
		return Image{}, fmt.Errorf("%s@%s: %w", ref, desc.Digest, err)
	}
	var config ocispec.Image
	if err := FetchJSON(ctx, fetcher, manifest.Config, MaxConfigBytes, &config); err != nil {
		return Image{}, err
	}
	return Image{Repository: repo, Manifest: desc, Layers: layers, Config: config.Config}, nil
}

// Layers returns the overlaybd blobs a manifest's layer annotations name, bottom first.
func Layers(manifest ocispec.Manifest) ([]Layer, error) {
	if n := len(manifest.Layers); n == 0 || n > MaxLayers {
		return nil, fmt.Errorf("%w: %d layers, want 1 to %d", ErrNotOverlaybd, n, MaxLayers)
	}
	out := make([]Layer, 0, len(manifest.Layers))
	for i, l := range manifest.Layers {
		raw, ok := l.Annotations[imagelabels.BlobDigest]
		if !ok {
			return nil, fmt.Errorf("%w: layer %d (%s) is not an overlaybd layer: no %s annotation (convert the image with obd convert)",
				ErrNotOverlaybd, i, l.Digest, imagelabels.BlobDigest)
		}
		blob, err := digest.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: layer %d: %s %q: %v", ErrNotOverlaybd, i, imagelabels.BlobDigest, raw, err)
		}
		size, err := imagelabels.ParseBlobSize(l.Annotations[imagelabels.BlobSize])
		if err != nil {
			return nil, fmt.Errorf("%w: layer %d: %v", ErrNotOverlaybd, i, err)
		}
		table, off, err := imagelabels.ParseRangeTable(l.Annotations[imagelabels.RangeTable], l.Annotations[imagelabels.RangeTableOffset], size)
		if err != nil {
			return nil, fmt.Errorf("%w: layer %d: %v", ErrNotOverlaybd, i, err)
		}
		out = append(out, Layer{Digest: blob, Size: size, RangeTable: table, RangeTableOffset: off})
	}
	return out, nil
}

// FetchJSON reads desc, at most limit bytes checked against its digest, into v.
func FetchJSON(ctx context.Context, fetcher remotes.Fetcher, desc ocispec.Descriptor, limit int64, v any) error {
	data, err := ociartifact.ReadVerified(ctx, fetcher, desc, limit)
	if errors.Is(err, ociartifact.ErrDigestMismatch) || errors.Is(err, ociartifact.ErrTooLarge) || errors.Is(err, ociartifact.ErrBadDescriptor) {
		return fmt.Errorf("%w: %w", ErrBadContent, err)
	}
	if err != nil {
		return err
	}
	if err := json.NewDecoder(bytes.NewReader(data)).Decode(v); err != nil {
		return fmt.Errorf("%w: %s %s: %v", ErrBadContent, desc.MediaType, desc.Digest, err)
	}
	return nil
}
