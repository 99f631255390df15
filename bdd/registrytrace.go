package bdd

import (
	"context"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/traceartifact"
)

const (
	// maxTraceLayers bounds a FetchTrace request's layers: an image has at most as many as a
	// stack (lsmt's limit is lower still).
	maxTraceLayers = 256
	// defaultTraceBudget is the replay budget of a request that gives none: well above a
	// start's reads (a python start traces about 5 MiB), well below a whole large image.
	defaultTraceBudget = 512 << 20
)

// FetchTrace returns the start trace the registry holds for an image (traceartifact.Select:
// the newest artifact whose traced bytes fit the budget, naming only the image's layers).
// An image without one answers found=false; a registry's bad artifact answers
// InvalidArgument, for the caller to go on without a replay.
func (s *Server) FetchTrace(ctx context.Context, req *bddv1.FetchTraceRequest) (*bddv1.FetchTraceResponse, error) {
	img, budget, err := traceImage(req)
	if err != nil {
		s.metrics.registryTraces.WithLabelValues("refused").Inc()
		return nil, grpcError(err)
	}
	sel, err := traceartifact.Select(ctx, s.fetcher.Resolver(), req.GetRef(), img, budget)
	switch {
	case errors.Is(err, traceartifact.ErrNoTrace):
		s.metrics.registryTraces.WithLabelValues("none").Inc()
		s.log.InfoContext(ctx, "no registry trace", "ref", req.GetRef(), "manifest", img.Manifest.Digest, "reason", err)
		return &bddv1.FetchTraceResponse{}, nil
	case isBadArtifact(err):
		s.metrics.registryTraces.WithLabelValues("refused").Inc()
		s.log.WarnContext(ctx, "registry trace refused", "ref", req.GetRef(), "manifest", img.Manifest.Digest, "err", err)
		return nil, grpcError(fmt.Errorf("%w: %w", ErrInvalidRequest, err))
	case err != nil:
		s.metrics.registryTraces.WithLabelValues("error").Inc()
		return nil, grpcError(fmt.Errorf("registry trace of %s: %w", req.GetRef(), err))
	}
	s.metrics.registryTraces.WithLabelValues("found").Inc()
	s.log.InfoContext(ctx, "registry trace found", "ref", req.GetRef(), "manifest", img.Manifest.Digest,
		"artifact", sel.Descriptor.Digest, "blobs", sel.Summary.Blobs, "ranges", sel.Summary.Ranges,
		"bytes", sel.Summary.Bytes, "page_trace", len(sel.Pages) > 0)
	return &bddv1.FetchTraceResponse{Found: true, Trace: sel.Blocks, PageTrace: sel.Pages,
		ArtifactDigest: sel.Descriptor.Digest.String()}, nil
}

// traceImage checks a FetchTrace request and returns the image it names and its budget.
func traceImage(req *bddv1.FetchTraceRequest) (traceartifact.Image, int64, error) {
	var img traceartifact.Image
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: fetch trace: %s", ErrInvalidRequest, fmt.Sprintf(format, args...))
	}
	if req.GetRef() == "" {
		return img, 0, bad("no image reference")
	}
	manifest, err := digest.Parse(req.GetManifestDigest())
	if err != nil {
		return img, 0, bad("manifest digest %q: %v", req.GetManifestDigest(), err)
	}
	if n := len(req.GetLayers()); n == 0 || n > maxTraceLayers {
		return img, 0, bad("%d layers, want 1 to %d", n, maxTraceLayers)
	}
	budget := req.GetMaxBytes()
	if budget < 0 {
		return img, 0, bad("negative budget %d", budget)
	}
	if budget == 0 {
		budget = defaultTraceBudget
	}
	img.Manifest = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: manifest}
	for i, b := range req.GetLayers() {
		checked := b
		if b.GetSize() == 0 { // unknown: the caller checks the sizes the trace names
			checked = &bddv1.RemoteBlob{Ref: b.GetRef(), Digest: b.GetDigest(), Size: 1}
		}
		if err := bddclient.CheckLayer(&bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: checked}}); err != nil {
			return img, 0, bad("layer %d: %v", i, err)
		}
		img.Layers = append(img.Layers, ocispec.Descriptor{Digest: digest.Digest(b.GetDigest()), Size: b.GetSize()})
	}
	return img, budget, nil
}

// isBadArtifact says whether err is the registry's fault: an artifact, index or trace that
// fails traceartifact's or blocktrace's checks.
func isBadArtifact(err error) bool {
	for _, kind := range []error{traceartifact.ErrBadArtifact, traceartifact.ErrBadIndex, traceartifact.ErrTooLarge,
		traceartifact.ErrDigestMismatch, traceartifact.ErrTooManyReferrers, traceartifact.ErrBadTrace,
		traceartifact.ErrImplausibleTrace, blocktrace.ErrBadTrace} {
		if errors.Is(err, kind) {
			return true
		}
	}
	return false
}
