package bdd

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/ociartifact"
	"github.com/obdproject/obd/ociindex"
)

const (
	// maxImageManifest caps the image manifest FetchIndex reads to learn the layers.
	maxImageManifest = 4 << 20
	// maxIndexFetches bounds the index artifacts FetchIndex fetches before it gives up.
	maxIndexFetches = 4
)

// FetchIndex finds the lazy-start index of an ordinary OCI image (obd index): the newest
// index artifact referring to the image's manifest that indexes exactly the image's layers.
// An image without one answers found=false; an image or artifact that fails its checks
// answers InvalidArgument.
func (s *Server) FetchIndex(ctx context.Context, req *bddv1.FetchIndexRequest) (*bddv1.FetchIndexResponse, error) {
	ref := req.GetRef()
	subject, err := digest.Parse(req.GetManifestDigest())
	if ref == "" || err != nil {
		return nil, grpcError(fmt.Errorf("%w: fetch index: reference %q, manifest digest %q", ErrInvalidRequest, ref, req.GetManifestDigest()))
	}
	repo, err := ociartifact.Repository(ref)
	if err != nil {
		return nil, grpcError(fmt.Errorf("%w: %w", ErrInvalidRequest, err))
	}
	resolver := s.fetcher.Resolver()
	fetcher, err := resolver.Fetcher(ctx, repo)
	if err != nil {
		return nil, grpcError(err)
	}
	var image ocispec.Manifest
	_, desc, err := resolver.Resolve(ctx, repo+"@"+subject.String())
	if err == nil && desc.Digest != subject {
		err = fmt.Errorf("%w: resolved to %s", ociartifact.ErrDigestMismatch, desc.Digest)
	}
	var body []byte
	if err == nil {
		body, err = ociartifact.ReadVerified(ctx, fetcher, desc, maxImageManifest)
	}
	if err != nil {
		return nil, grpcError(fmt.Errorf("index of %s: image manifest %s: %w", ref, subject, err))
	}
	if err := ociartifact.DecodeStrictJSON(body, &image); err != nil || len(image.Layers) == 0 {
		return nil, grpcError(fmt.Errorf("%w: image manifest %s of %s is not an image manifest (%v)", ErrInvalidRequest, subject, ref, err))
	}
	referrers, err := ociartifact.Referrers(ctx, resolver, repo, subject)
	if err != nil {
		return nil, grpcError(fmt.Errorf("index of %s: %w", ref, err))
	}
	var candidates []ocispec.Descriptor
	for _, d := range referrers {
		if d.ArtifactType == ociindex.ArtifactType && d.MediaType == ocispec.MediaTypeImageManifest {
			candidates = append(candidates, d)
		}
	}
	slices.SortStableFunc(candidates, func(a, b ocispec.Descriptor) int {
		ta, _ := time.Parse(time.RFC3339, a.Annotations[ociindex.AnnotationCreated])
		tb, _ := time.Parse(time.RFC3339, b.Annotations[ociindex.AnnotationCreated])
		return cmp.Compare(tb.UnixNano(), ta.UnixNano())
	})
	var firstErr error
	for i, d := range candidates {
		if i == maxIndexFetches {
			break
		}
		data, err := ociartifact.ReadVerified(ctx, fetcher, d, ociindex.MaxManifestBytes)
		if err != nil {
			firstErr = cmp.Or(firstErr, err)
			continue
		}
		layers, err := ociindex.ParseManifest(data, subject, image.Layers)
		if err != nil {
			firstErr = cmp.Or(firstErr, err)
			continue
		}
		resp := &bddv1.FetchIndexResponse{Found: true, ArtifactDigest: d.Digest.String()}
		blob := func(d ocispec.Descriptor) *bddv1.RemoteBlob {
			return &bddv1.RemoteBlob{Ref: repo, Digest: d.Digest.String(), Size: d.Size}
		}
		for _, l := range layers {
			gz := blob(l.GzIndex)
			gz.RangeTable, gz.RangeTableOffset = l.GzIndexTable.String(), l.GzIndexTableOffset
			resp.Layers = append(resp.Layers, &bddv1.IndexedBlob{Blob: blob(l.Source), GzIndex: gz, Meta: blob(l.Meta), Map: blob(l.Map)})
		}
		s.log.InfoContext(ctx, "registry index found", "ref", ref, "manifest", subject, "artifact", d.Digest, "layers", len(layers))
		return resp, nil
	}
	if firstErr != nil {
		s.log.WarnContext(ctx, "registry index refused", "ref", ref, "manifest", subject, "err", firstErr)
		return nil, grpcError(fmt.Errorf("%w: index of %s: %w", ErrInvalidRequest, ref, firstErr))
	}
	s.log.InfoContext(ctx, "no registry index", "ref", ref, "manifest", subject)
	return &bddv1.FetchIndexResponse{}, nil
}
