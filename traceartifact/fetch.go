package traceartifact

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/ociartifact"
	"github.com/obdproject/obd/pagetrace"
)

// maxSelectFetches bounds the artifacts Select fetches before it gives up.
const maxSelectFetches = 8

// List returns the descriptors of the start trace artifacts of subject in the repository of
// ref, newest first (by AnnotationCreated; undated ones last). A registry that keeps no
// referrers of subject, with the referrers API or the referrers tag, gives an empty list. A
// subject with more than MaxReferrers referrers of any type is an error wrapping
// ErrTooManyReferrers.
func List(ctx context.Context, resolver remotes.Resolver, ref string, subject digest.Digest) ([]ocispec.Descriptor, error) {
	repo, err := repository(ref)
	if err != nil {
		return nil, err
	}
	all, err := referrers(ctx, resolver, repo, subject)
	if err != nil {
		return nil, err
	}
	var traces []ocispec.Descriptor
	for _, d := range all {
		if isStartTrace(d) {
			traces = append(traces, d)
		}
	}
	slices.SortStableFunc(traces, func(a, b ocispec.Descriptor) int {
		if c := created(b).Compare(created(a)); c != 0 {
			return c
		}
		return cmp.Compare(a.Digest, b.Digest)
	})
	return traces, nil
}

// referrers lists every referrer of subject (ociartifact.Referrers).
func referrers(ctx context.Context, resolver remotes.Resolver, repo string, subject digest.Digest) ([]ocispec.Descriptor, error) {
	return ociartifact.Referrers(ctx, resolver, repo, subject)
}

// isStartTrace reports whether a referrer is a start trace artifact. A registry that takes a
// referrer's artifactType from its config's media type alone (the rule before OCI 1.1, as
// go-containerregistry's registry does) lists one as the empty type: its traced-bytes
// annotation tells it apart, and Fetch checks the manifest's own artifactType.
func isStartTrace(d ocispec.Descriptor) bool {
	if d.ArtifactType == ArtifactType {
		return true
	}
	_, marked := d.Annotations[AnnotationTracedBytes]
	return marked && (d.ArtifactType == "" || d.ArtifactType == ocispec.MediaTypeEmptyJSON)
}

// created is a referrer's AnnotationCreated; the zero time when it has none.
func created(d ocispec.Descriptor) time.Time {
	t, _ := time.Parse(time.RFC3339, d.Annotations[AnnotationCreated])
	return t
}

// Fetch fetches the start trace artifact desc (from List) of subject from the repository of
// ref. It checks the manifest (media types, the empty config, its subject, caps), every blob
// against its descriptor's digest and size, and that both traces decode. It does not check
// the block trace against the image's layers: Select does.
func Fetch(ctx context.Context, resolver remotes.Resolver, ref string, subject digest.Digest, desc ocispec.Descriptor) (Trace, error) {
	if desc.MediaType != ocispec.MediaTypeImageManifest {
		return Trace{}, fmt.Errorf("%w: %s has media type %q", ErrBadArtifact, desc.Digest, desc.MediaType)
	}
	repo, err := repository(ref)
	if err != nil {
		return Trace{}, err
	}
	fetcher, err := resolver.Fetcher(ctx, repo)
	if err != nil {
		return Trace{}, fmt.Errorf("traceartifact: %s: %w", repo, err)
	}
	data, err := readVerified(ctx, fetcher, desc, MaxManifestBytes)
	if err != nil {
		return Trace{}, fmt.Errorf("artifact %s: %w", desc.Digest, err)
	}
	m, err := parseManifest(data, subject)
	if err != nil {
		return Trace{}, fmt.Errorf("artifact %s: %w", desc.Digest, err)
	}
	var t Trace
	if t.Blocks, err = readVerified(ctx, fetcher, m.blocks, MaxBlocksBytes); err != nil {
		return Trace{}, fmt.Errorf("artifact %s: block trace: %w", desc.Digest, err)
	}
	if _, err := decodeBlocks(t.Blocks); err != nil {
		return Trace{}, fmt.Errorf("artifact %s: %w", desc.Digest, err)
	}
	if m.pages != nil {
		if t.Pages, err = readVerified(ctx, fetcher, *m.pages, MaxPagesBytes); err != nil {
			return Trace{}, fmt.Errorf("artifact %s: page trace: %w", desc.Digest, err)
		}
		if _, err := pagetrace.Decode(t.Pages); err != nil {
			return Trace{}, fmt.Errorf("artifact %s: %w: %v", desc.Digest, ErrBadTrace, err)
		}
	}
	return t, nil
}

// readVerified reads the content of desc, at most limit bytes, and checks its size and
// digest; a descriptor that cannot be checked makes a bad artifact.
func readVerified(ctx context.Context, fetcher remotes.Fetcher, desc ocispec.Descriptor, limit int64) ([]byte, error) {
	if err := checkDescriptor(desc); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadArtifact, err)
	}
	return ociartifact.ReadVerified(ctx, fetcher, desc, limit)
}

// Selected is the start trace Select chose.
type Selected struct {
	// Trace: the block trace re-encoded with every blob's reference set to Select's ref, the
	// page trace as stored.
	Trace
	Descriptor ocispec.Descriptor // the artifact manifest's
	Summary    Summary            // of the block trace
}

// Select chooses the start trace to replay for img (of img.Manifest, the Digest is used) from
// the repository of ref; budget is the most traced bytes the caller will replay
// (math.MaxInt64: no limit).
//
// The rule: the newest artifact whose block trace's traced bytes fit the budget. Newest,
// because a trace is recorded again to replace one (a different command, a recording the
// page cache spoiled); one trace rather than a merge of several, because traces of different
// commands are different working sets, whose union no start reads and whose first-read
// orders do not interleave. Candidates whose traced-bytes annotation is over the budget are
// not fetched; the others are fetched newest first, at most 8, and must name only blobs of
// img.Layers, with ranges inside them, and really fit the budget.
//
// Select returns an error wrapping ErrNoTrace when subject has no start trace that fits; when
// some fitted but none passed the checks, the first one's error.
func Select(ctx context.Context, resolver remotes.Resolver, ref string, img Image, budget int64) (Selected, error) {
	subject := img.Manifest.Digest
	repo, err := repository(ref)
	if err != nil {
		return Selected{}, err
	}
	candidates, err := List(ctx, resolver, repo, subject)
	if err != nil {
		return Selected{}, err
	}
	var (
		tried    int
		firstErr error
	)
	for _, desc := range candidates {
		if tried == maxSelectFetches {
			break
		}
		if n, err := strconv.ParseInt(desc.Annotations[AnnotationTracedBytes], 10, 64); err == nil && n > budget {
			continue
		}
		tried++
		sel, err := fetchFitting(ctx, resolver, repo, subject, desc, img.Layers, budget)
		if errors.Is(err, errOverBudget) {
			continue
		}
		if err != nil {
			firstErr = cmp.Or(firstErr, err)
			continue
		}
		return sel, nil
	}
	if firstErr != nil {
		return Selected{}, firstErr
	}
	return Selected{}, fmt.Errorf("%w: %d start traces of %s in %s, none of at most %d traced bytes", ErrNoTrace, len(candidates), subject, repo, budget)
}

// errOverBudget: a fetched trace's traced bytes are over the budget, whatever its annotation
// said.
var errOverBudget = errors.New("traceartifact: over budget")

func fetchFitting(ctx context.Context, resolver remotes.Resolver, repo string, subject digest.Digest, desc ocispec.Descriptor, layers []ocispec.Descriptor, budget int64) (Selected, error) {
	t, err := Fetch(ctx, resolver, repo, subject, desc)
	if err != nil {
		return Selected{}, err
	}
	blocks, summary, err := fitBlocks(t.Blocks, layers, repo)
	if err != nil {
		return Selected{}, fmt.Errorf("artifact %s: %w", desc.Digest, err)
	}
	if summary.Bytes > budget {
		return Selected{}, errOverBudget
	}
	return Selected{Trace: Trace{Blocks: blocks, Pages: t.Pages}, Descriptor: desc, Summary: summary}, nil
}
