package traceartifact

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/ociartifact"
	"github.com/obdproject/obd/pagetrace"
)

// Pushed describes a pushed start trace artifact.
type Pushed struct {
	// Descriptor is the artifact manifest's, as the subject's referrers list shows it.
	Descriptor ocispec.Descriptor
	// Subject is the image manifest's.
	Subject ocispec.Descriptor
	// Bytes is the size of the manifest and its blobs (some may have been in the registry).
	Bytes int64
	// ReferrersTag is the referrers tag Push updated, for a registry that did not list the
	// artifact itself; "" when it did.
	ReferrersTag string
	Summary      Summary // of the block trace
}

// Image is the image a trace was recorded on, or is chosen for.
type Image struct {
	// Manifest is the image's platform manifest (never an index): a trace artifact's subject.
	Manifest ocispec.Descriptor
	// Layers are the image's layer blobs, by Digest and Size: the only blobs a trace may name.
	// For Select a Size of 0 is unknown: the trace's size of that blob is not checked.
	Layers []ocispec.Descriptor
}

// Push stores trace as a start trace artifact of img, with img.Manifest as its subject, in the
// repository of ref (a reference with or without tag or digest). It refuses a manifest that is
// not an image manifest, a block trace that does not decode, names blobs other than img's
// layers or is implausible (Summary.CheckPlausible), and a page trace that does not decode.
//
// After the manifest is pushed Push attaches it to the subject (ociartifact.Attach): a
// registry with the referrers API lists it already; for one without, Push adds it to the
// referrers index at the subject's referrers tag.
func Push(ctx context.Context, resolver remotes.Resolver, ref string, img Image, trace Trace, info Info) (Pushed, error) {
	subject := img.Manifest
	if !images.IsManifestType(subject.MediaType) {
		return Pushed{}, fmt.Errorf("traceartifact: subject %s has media type %q, want an image manifest", subject.Digest, subject.MediaType)
	}
	if err := checkDescriptor(subject); err != nil {
		return Pushed{}, fmt.Errorf("traceartifact: subject: %v", err)
	}
	repo, err := repository(ref)
	if err != nil {
		return Pushed{}, err
	}
	_, summary, err := fitBlocks(trace.Blocks, img.Layers, repo)
	if err != nil {
		return Pushed{}, err
	}
	if err := summary.CheckPlausible(); err != nil {
		return Pushed{}, err
	}
	if trace.Pages != nil {
		if len(trace.Pages) > MaxPagesBytes {
			return Pushed{}, fmt.Errorf("%w: page trace of %d bytes, cap %d", ErrTooLarge, len(trace.Pages), MaxPagesBytes)
		}
		if _, err := pagetrace.Decode(trace.Pages); err != nil {
			return Pushed{}, fmt.Errorf("%w: %v", ErrBadTrace, err)
		}
	}
	annotations, err := annotationsOf(info, summary.Bytes)
	if err != nil {
		return Pushed{}, err
	}

	blobs := []blob{
		{ociartifact.EmptyConfig(), ocispec.DescriptorEmptyJSON.Data},
		{blobDescriptor(MediaTypeBlocks, trace.Blocks), trace.Blocks},
	}
	var pages *ocispec.Descriptor
	if trace.Pages != nil {
		d := blobDescriptor(MediaTypePages, trace.Pages)
		pages = &d
		blobs = append(blobs, blob{d, trace.Pages})
	}
	manifestJSON, err := buildManifest(subject, blobs[1].desc, pages, annotations)
	if err != nil {
		return Pushed{}, fmt.Errorf("traceartifact: %w", err)
	}
	artifact := blobDescriptor(ocispec.MediaTypeImageManifest, manifestJSON)
	blobs = append(blobs, blob{artifact, manifestJSON}) // last: a manifest is pushed after what it names

	pusher, err := resolver.Pusher(ctx, repo)
	if err != nil {
		return Pushed{}, fmt.Errorf("traceartifact: push to %s: %w", repo, err)
	}
	pushed := Pushed{Subject: subject, Summary: summary}
	for _, b := range blobs {
		if err := ociartifact.PushBytes(ctx, pusher, repo, b.desc, b.data); err != nil {
			return Pushed{}, fmt.Errorf("traceartifact: push to %s: %w", repo, err)
		}
		pushed.Bytes += b.desc.Size
	}
	artifact.ArtifactType = ArtifactType
	artifact.Annotations = annotations
	pushed.Descriptor = artifact
	if pushed.ReferrersTag, err = ociartifact.Attach(ctx, resolver, repo, subject.Digest, artifact); err != nil {
		return Pushed{}, err
	}
	return pushed, nil
}

// blob is content to push with its descriptor.
type blob struct {
	desc ocispec.Descriptor
	data []byte
}

func blobDescriptor(mediaType string, data []byte) ocispec.Descriptor {
	return ociartifact.Descriptor(mediaType, data)
}

// ReferrersTag is the tag of the referrers index of subject in the distribution spec's
// referrers tag schema (ociartifact.ReferrersTag).
func ReferrersTag(subject digest.Digest) string { return ociartifact.ReferrersTag(subject) }

// repository returns the repository of ref (ociartifact.Repository).
func repository(ref string) (string, error) { return ociartifact.Repository(ref) }
