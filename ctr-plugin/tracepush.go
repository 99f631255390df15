package ctrplugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/traceartifact"
	"github.com/obdproject/obd/tracestore"
)

// platformManifest returns the descriptor and content of the manifest of img that was
// unpacked: the target itself, or the index's manifest that best matches img's platform (the
// choice containerd's unpack makes).
func platformManifest(ctx context.Context, img containerd.Image) (ocispec.Descriptor, ocispec.Manifest, error) {
	cs := img.ContentStore()
	var found []ocispec.Descriptor
	walk := images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		if images.IsManifestType(desc.MediaType) {
			found = append(found, desc)
			return nil, nil
		}
		return images.Children(ctx, cs, desc)
	})
	handler := images.LimitManifests(images.FilterPlatforms(walk, img.Platform()), img.Platform(), 1)
	if err := images.Walk(ctx, handler, img.Target()); err != nil {
		return ocispec.Descriptor{}, ocispec.Manifest{}, fmt.Errorf("manifest of %s: %w", img.Name(), err)
	}
	if len(found) != 1 {
		return ocispec.Descriptor{}, ocispec.Manifest{}, fmt.Errorf("manifest of %s: %d manifests for the platform, want 1", img.Name(), len(found))
	}
	manifest, err := images.Manifest(ctx, cs, found[0], img.Platform())
	if err != nil {
		return ocispec.Descriptor{}, ocispec.Manifest{}, fmt.Errorf("manifest of %s: %w", img.Name(), err)
	}
	return found[0], manifest, nil
}

// overlaybdLayers returns the overlaybd blob (digest and size, as bdd reads it) of each layer
// of manifest, lowest first.
func overlaybdLayers(manifest ocispec.Manifest) ([]ocispec.Descriptor, error) {
	blobs, err := overlaybdBlobs(manifest)
	if err != nil {
		return nil, err
	}
	layers := make([]ocispec.Descriptor, len(blobs))
	for i, blob := range blobs {
		raw := manifest.Layers[i].Annotations[imagelabels.BlobSize]
		size, err := imagelabels.ParseBlobSize(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: layer %d: %w", ErrNotOverlaybd, i, err)
		}
		layers[i] = ocispec.Descriptor{Digest: blob, Size: size}
	}
	return layers, nil
}

// coarseClockLag bounds how far a file time may lag the clock time.Now reads.
const coarseClockLag = 50 * time.Millisecond

// recordedPages returns the page trace the snapshotter stored for chain since the given time
// (when the recording run's snapshot was collected: the snapshotter stores the page trace of
// the run's own device as it removes it), nil when it stored none since or since is zero.
func recordedPages(store tracestore.Store, chain digest.Digest, since time.Time) ([]byte, error) {
	if since.IsZero() {
		return nil, nil
	}
	info, err := os.Stat(store.PagesPath(chain))
	// File times come from the kernel's coarse clock, which may lag the one since was read
	// from by a tick.
	if errors.Is(err, os.ErrNotExist) || (err == nil && info.ModTime().Before(since.Add(-coarseClockLag))) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	pages, err := store.LoadPages(chain)
	if err != nil {
		return nil, err
	}
	return pages.Encode(), nil
}

// pushTrace pushes a recorded start as a start trace artifact of img's platform manifest, to
// img's repository.
func pushTrace(ctx context.Context, resolver remotes.Resolver, img containerd.Image, trace traceartifact.Trace, info traceartifact.Info) (traceartifact.Pushed, error) {
	desc, manifest, err := platformManifest(ctx, img)
	if err != nil {
		return traceartifact.Pushed{}, err
	}
	layers, err := overlaybdLayers(manifest)
	if err != nil {
		return traceartifact.Pushed{}, fmt.Errorf("image %s: %w", img.Name(), err)
	}
	return traceartifact.Push(ctx, resolver, img.Name(), traceartifact.Image{Manifest: desc, Layers: layers}, trace, info)
}
