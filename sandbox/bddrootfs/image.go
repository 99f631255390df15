package bddrootfs

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/obdimage"
	"github.com/obdproject/obd/pagetrace"
	"github.com/obdproject/obd/sandbox"
)

const (
	// replayTimeout bounds a start trace's lookup and replay: the image's start reads go on
	// without it when it is slow.
	replayTimeout = 2 * time.Minute
	// warmReaders read a page trace in, as the snapshotter's do.
	warmReaders = 8
)

// isImageRef says whether ref names a registry image (registry/repo:tag, @sha256:...)
// rather than a layer stack: one element that is neither an absolute path nor a blob
// REF@DIGEST:SIZE.
func isImageRef(ref string) bool {
	if ref == "" || strings.Contains(ref, ",") || filepath.IsAbs(ref) {
		return false
	}
	_, err := bddclient.ParseBlobLayer(ref)
	return err != nil
}

// resolveImage reads the obd image ref names from its registry and returns its layers as
// bdd takes them: blobs of its repository, pinned to their range tables.
func (p *Provider) resolveImage(ctx context.Context, ref string) (obdimage.Image, []*bddv1.Layer, error) {
	if p.Resolver == nil {
		return obdimage.Image{}, nil, fmt.Errorf("%w: %q is not a layer stack, and image references need a registry resolver", sandbox.ErrBadImage, ref)
	}
	if _, err := obdimage.Repository(ref); err != nil {
		return obdimage.Image{}, nil, fmt.Errorf("%w: %w", sandbox.ErrBadImage, err)
	}
	callCtx, cancel := context.WithTimeout(ctx, p.timeout())
	defer cancel()
	img, err := obdimage.Resolve(callCtx, p.Resolver, ref, p.Platform)
	if errors.Is(err, obdimage.ErrNotOverlaybd) || errors.Is(err, obdimage.ErrNoPlatform) || errors.Is(err, obdimage.ErrBadContent) {
		return obdimage.Image{}, nil, fmt.Errorf("%w: %w", sandbox.ErrBadImage, err)
	}
	if err != nil {
		return obdimage.Image{}, nil, fmt.Errorf("bddrootfs: %w", err)
	}
	layers := make([]*bddv1.Layer, len(img.Layers))
	for i, l := range img.Layers {
		layers[i] = &bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: &bddv1.RemoteBlob{Ref: img.Repository, Digest: l.Digest.String(),
			Size: l.Size, RangeTable: l.RangeTable.String(), RangeTableOffset: l.RangeTableOffset}}}
		if err := bddclient.CheckLayer(layers[i]); err != nil {
			return obdimage.Image{}, nil, fmt.Errorf("%w: %s layer %d: %w", sandbox.ErrBadImage, ref, i, err)
		}
	}
	return img, layers, nil
}

// ReplayStats count what the provider's image starts replayed.
type ReplayStats struct {
	Found      int64 // images whose registry held a start trace
	Prefetched int64 // block traces bdd replayed to the end
	Warmed     int64 // page traces read in to the end
}

// startReplay looks up the start trace the registry holds for img (bdd's FetchTrace) and,
// in the background, has bdd replay its block trace and reads its page trace in under dir,
// where img is mounted. It never fails a start: a missing or broken trace costs only the
// speed-up. stop cancels the replay and waits for it.
func (p *Provider) startReplay(ref string, img obdimage.Image, dir string) (stop func()) {
	ctx, cancel := context.WithTimeout(context.Background(), replayTimeout)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer cancel()
		log := p.logger().With("image", ref, "manifest", img.Manifest.Digest)
		req := &bddv1.FetchTraceRequest{Ref: img.Repository, ManifestDigest: img.Manifest.Digest.String()}
		for _, l := range img.Layers {
			req.Layers = append(req.Layers, &bddv1.RemoteBlob{Ref: img.Repository, Digest: l.Digest.String(), Size: l.Size})
		}
		resp, err := p.Client.FetchTrace(ctx, req)
		if err != nil || !resp.GetFound() {
			log.Info("no start trace replayed", "err", err)
			return
		}
		p.mu.Lock()
		p.replays.Found++
		p.mu.Unlock()
		var parts sync.WaitGroup
		parts.Add(2)
		go func() {
			defer parts.Done()
			start := time.Now()
			_, err := p.Client.Prefetch(ctx, &bddv1.PrefetchRequest{Trace: pinTrace(resp.GetTrace(), img)})
			log.Info("start trace prefetched", "artifact", resp.GetArtifactDigest(), "took", time.Since(start), "err", err)
			if err == nil {
				p.mu.Lock()
				p.replays.Prefetched++
				p.mu.Unlock()
			}
		}()
		go func() {
			defer parts.Done()
			pages, err := pagetrace.Decode(resp.GetPageTrace())
			if err != nil || len(pages) == 0 {
				return
			}
			start := time.Now()
			n, err := pagetrace.Warm(ctx, dir, pages, warmReaders)
			log.Info("page trace read in", "bytes", n, "took", time.Since(start), "err", err)
			if err == nil {
				p.mu.Lock()
				p.replays.Warmed++
				p.mu.Unlock()
			}
		}()
		parts.Wait()
	}()
	return func() {
		cancel()
		wg.Wait()
	}
}

// Replays returns what the provider's image starts replayed so far.
func (p *Provider) Replays() ReplayStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.replays
}

// pinTrace names each blob of an encoded block trace as the image's devices read it: with
// its range table from the manifest (blocktrace.Trace.Pin), so that the replay fills the
// cache entries those devices read. A trace that does not decode goes as it is, for bdd to
// refuse.
func pinTrace(raw []byte, img obdimage.Image) []byte {
	t, err := blocktrace.Decode(raw)
	if err != nil {
		return raw
	}
	changed := false
	for _, l := range img.Layers {
		changed = t.Pin(l.Digest, img.Repository, l.RangeTable, l.RangeTableOffset) || changed
	}
	if !changed {
		return raw
	}
	if out, err := t.Encode(); err == nil {
		return out
	}
	return raw
}
