package ctrplugin

import (
	"context"
	"errors"
	"fmt"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/blocktrace"
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
	chain, _, err := imageTraceChain(ctx, img)
	return chain, err
}

// imageTraceChain is traceChain that also returns img's manifest.
func imageTraceChain(ctx context.Context, img containerd.Image) (digest.Digest, ocispec.Manifest, error) {
	manifest, err := images.Manifest(ctx, img.ContentStore(), img.Target(), img.Platform())
	if err != nil {
		return "", manifest, fmt.Errorf("manifest of %s: %w", img.Name(), err)
	}
	blobs, err := overlaybdBlobs(manifest)
	if err != nil {
		return "", manifest, fmt.Errorf("image %s: %w", img.Name(), err)
	}
	chain, err := tracestore.ChainID(blobs)
	return chain, manifest, err
}

// pinTrace pins the blobs of an encoded trace from the layers of manifest
// (blocktrace.Trace.Pin): their range tables, as the devices of the image read them. A trace
// it cannot decode, or a layer whose annotations do not parse, is left as it is (bdd and the
// snapshotter refuse what is wrong).
func pinTrace(raw []byte, manifest ocispec.Manifest) []byte {
	t, err := blocktrace.Decode(raw)
	if err != nil {
		return raw
	}
	changed := false
	for _, l := range manifest.Layers {
		d, err := digest.Parse(l.Annotations[imagelabels.BlobDigest])
		if err != nil {
			continue
		}
		table, off, err := imagelabels.ParseRangeTable(l.Annotations[imagelabels.RangeTable], l.Annotations[imagelabels.RangeTableOffset], l.Size)
		if err != nil {
			continue
		}
		changed = t.Pin(d, "", table, off) || changed
	}
	if !changed {
		return raw
	}
	if out, err := t.Encode(); err == nil {
		return out
	}
	return raw
}
