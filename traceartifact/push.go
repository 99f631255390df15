package traceartifact

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

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
	Layers []ocispec.Descriptor
}

// Push stores trace as a start trace artifact of img, with img.Manifest as its subject, in the
// repository of ref (a reference with or without tag or digest). It refuses a manifest that is
// not an image manifest, a block trace that does not decode, names blobs other than img's
// layers or is implausible (Summary.CheckPlausible), and a page trace that does not decode.
//
// After the manifest is pushed Push lists the subject's referrers: a registry with the
// referrers API lists the artifact already; for one without, Push adds it to the referrers
// index at the subject's referrers tag. Two pushes updating that index at once can lose one
// of the two entries (the distribution spec's tag schema has no compare-and-swap); pushing
// again restores it.
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
		{emptyConfig(), ocispec.DescriptorEmptyJSON.Data},
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
		if err := pushBytes(ctx, pusher, repo, b.desc, b.data); err != nil {
			return Pushed{}, fmt.Errorf("traceartifact: push to %s: %w", repo, err)
		}
		pushed.Bytes += b.desc.Size
	}
	artifact.ArtifactType = ArtifactType
	artifact.Annotations = annotations
	pushed.Descriptor = artifact

	listed, err := referrers(ctx, resolver, repo, subject.Digest)
	if err != nil {
		return Pushed{}, err
	}
	if slices.ContainsFunc(listed, func(d ocispec.Descriptor) bool { return d.Digest == artifact.Digest }) {
		return pushed, nil
	}
	pushed.ReferrersTag, err = addToReferrersTag(ctx, resolver, repo, subject.Digest, artifact)
	if err != nil {
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
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
}

// pushBytes pushes one blob or manifest to repo; one the registry has already is not an
// error.
func pushBytes(ctx context.Context, pusher remotes.Pusher, repo string, desc ocispec.Descriptor, data []byte) error {
	var (
		w   content.Writer
		err error
	)
	if ingester, ok := pusher.(content.Ingester); ok {
		// containerd's pusher remembers what it pushed by this ref (Push uses the digest
		// alone): scoped to the repository, so that the empty config every artifact shares,
		// pushed to one repository, is not taken as present in the next.
		w, err = ingester.Writer(ctx, content.WithRef(repo+"@"+desc.Digest.String()), content.WithDescriptor(desc))
	} else {
		w, err = pusher.Push(ctx, desc)
	}
	if errdefs.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("push %s %s: %w", desc.MediaType, desc.Digest, err)
	}
	defer w.Close()
	if err := content.Copy(ctx, w, bytes.NewReader(data), desc.Size, desc.Digest); err != nil && !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("push %s %s: %w", desc.MediaType, desc.Digest, err)
	}
	return nil
}

// ReferrersTag is the tag of the referrers index of subject in the distribution spec's
// referrers tag schema: <alg>-<encoded>, the algorithm cut to 32 and the encoded digest to
// 64 characters.
func ReferrersTag(subject digest.Digest) string {
	alg, enc := subject.Algorithm().String(), subject.Encoded()
	return alg[:min(len(alg), 32)] + "-" + enc[:min(len(enc), 64)]
}

// addToReferrersTag adds artifact to the referrers index at subject's referrers tag, creating
// the index when there is none, and returns the tag.
func addToReferrersTag(ctx context.Context, resolver remotes.Resolver, repo string, subject digest.Digest, artifact ocispec.Descriptor) (string, error) {
	tag := ReferrersTag(subject)
	tagRef := repo + ":" + tag
	idx := index{SchemaVersion: 2, MediaType: ocispec.MediaTypeImageIndex}
	_, desc, err := resolver.Resolve(ctx, tagRef)
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return "", fmt.Errorf("traceartifact: referrers tag %s: %w", tagRef, err)
	default:
		if desc.MediaType != ocispec.MediaTypeImageIndex {
			return "", fmt.Errorf("%w: %s has media type %q", ErrBadIndex, tagRef, desc.MediaType)
		}
		fetcher, err := resolver.Fetcher(ctx, tagRef)
		if err != nil {
			return "", fmt.Errorf("traceartifact: referrers tag %s: %w", tagRef, err)
		}
		data, err := readVerified(ctx, fetcher, desc, MaxIndexBytes)
		if err != nil {
			return "", fmt.Errorf("referrers tag %s: %w", tagRef, err)
		}
		if idx, err = parseIndex(data); err != nil {
			return "", fmt.Errorf("referrers tag %s: %w", tagRef, err)
		}
	}
	if slices.ContainsFunc(idx.Manifests, func(d ocispec.Descriptor) bool { return d.Digest == artifact.Digest }) {
		return tag, nil
	}
	if len(idx.Manifests) >= MaxReferrers {
		return "", fmt.Errorf("%w: %s lists %d, cap %d", ErrTooManyReferrers, tagRef, len(idx.Manifests), MaxReferrers)
	}
	idx.Manifests = append(idx.Manifests, artifact)
	data, err := json.Marshal(idx)
	if err != nil {
		return "", fmt.Errorf("traceartifact: %w", err)
	}
	// A pusher of the tag reference moves the tag to what it pushes.
	pusher, err := resolver.Pusher(ctx, tagRef)
	if err != nil {
		return "", fmt.Errorf("traceartifact: push to %s: %w", tagRef, err)
	}
	if err := pushBytes(ctx, pusher, repo, blobDescriptor(ocispec.MediaTypeImageIndex, data), data); err != nil {
		return "", fmt.Errorf("traceartifact: push to %s: %w", tagRef, err)
	}
	return tag, nil
}

// repository returns the repository of ref, a reference with or without tag or digest, in
// the form containerd's resolver takes (e.g. docker.io/library/busybox).
func repository(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("traceartifact: reference %q: %w", ref, err)
	}
	return reference.TrimNamed(named).String(), nil
}
