package ctrplugin

import (
	"context"
	"errors"
	"fmt"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/tracestore"
)

// ErrNotOverlaybd is returned for an image whose layers are not all overlaybd blobs.
var ErrNotOverlaybd = errors.New("not an overlaybd image")

// overlaybdBlobs returns the overlaybd blob digest of each layer of manifest, lowest first.
func overlaybdBlobs(manifest ocispec.Manifest) ([]digest.Digest, error) {
	if len(manifest.Layers) == 0 {
		return nil, fmt.Errorf("%w: the manifest has no layers", ErrNotOverlaybd)
	}
	blobs := make([]digest.Digest, 0, len(manifest.Layers))
	for i, layer := range manifest.Layers {
		raw, ok := layer.Annotations[imagelabels.BlobDigest]
		if !ok {
			return nil, fmt.Errorf("%w: layer %d (%s) has no %s annotation (convert it with obdconv)", ErrNotOverlaybd, i, layer.Digest, imagelabels.BlobDigest)
		}
		d, err := digest.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: layer %d: %s %q: %v", ErrNotOverlaybd, i, imagelabels.BlobDigest, raw, err)
		}
		blobs = append(blobs, d)
	}
	return blobs, nil
}

// traceChain returns the key under which the trace of img is stored.
func traceChain(ctx context.Context, img containerd.Image) (digest.Digest, error) {
	manifest, err := images.Manifest(ctx, img.ContentStore(), img.Target(), img.Platform())
	if err != nil {
		return "", fmt.Errorf("manifest of %s: %w", img.Name(), err)
	}
	blobs, err := overlaybdBlobs(manifest)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", img.Name(), err)
	}
	return tracestore.ChainID(blobs)
}
