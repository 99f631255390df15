// Package ociartifact is what obd's registry artifacts share: pushing an
// artifact manifest with a subject and making it findable under that subject
// (the OCI 1.1 referrers API, or the distribution spec's referrers tag schema
// for registries without it), listing a subject's referrers, and reading
// blobs and manifests with a cap and a digest check. Start traces
// (traceartifact) and lazy-start indexes of OCI images (ociindex's artifact)
// use it; it sits between them and containerd's resolver.
//
// Everything read from a registry is untrusted: sizes are capped before
// anything is read and every blob is checked against its descriptor.
package ociartifact

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Limits on what is read from a registry.
const (
	// MaxIndexBytes caps a referrers index (containerd's cap on manifests is 4 MiB too).
	MaxIndexBytes = 4 << 20
	// MaxReferrers caps the descriptors of a subject's referrers list, of every artifact type.
	MaxReferrers = 4096
)

// Errors, each wrapped with the detail of what was wrong.
var (
	// ErrBadIndex: a referrers index that cannot be read.
	ErrBadIndex = errors.New("ociartifact: bad referrers index")
	// ErrTooLarge: a manifest, index or blob over its cap.
	ErrTooLarge = errors.New("ociartifact: too large")
	// ErrDigestMismatch: content that does not match its descriptor's digest or size.
	ErrDigestMismatch = errors.New("ociartifact: digest mismatch")
	// ErrTooManyReferrers: a subject with more than MaxReferrers referrers.
	ErrTooManyReferrers = errors.New("ociartifact: too many referrers")
	// ErrBadDescriptor: a descriptor without a verifiable digest or with a negative size.
	ErrBadDescriptor = errors.New("ociartifact: bad descriptor")
)

// Repository returns the repository of ref, a reference with or without tag or digest, in
// the form containerd's resolver takes (e.g. docker.io/library/busybox).
func Repository(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("ociartifact: reference %q: %w", ref, err)
	}
	return reference.TrimNamed(named).String(), nil
}

// EmptyConfig is the OCI empty descriptor without its embedded data, which registries and
// clients need not keep: the config of every artifact here.
func EmptyConfig() ocispec.Descriptor {
	d := ocispec.DescriptorEmptyJSON
	d.Data = nil
	return d
}

// IsEmptyConfig reports whether d is the OCI empty descriptor.
func IsEmptyConfig(d ocispec.Descriptor) bool {
	return d.MediaType == ocispec.MediaTypeEmptyJSON && d.Digest == ocispec.DescriptorEmptyJSON.Digest && d.Size == ocispec.DescriptorEmptyJSON.Size
}

// Descriptor describes data of mediaType.
func Descriptor(mediaType string, data []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
}

// CheckDescriptor checks what a fetch relies on: a digest this process can verify and a size.
func CheckDescriptor(d ocispec.Descriptor) error {
	if err := d.Digest.Validate(); err != nil {
		return fmt.Errorf("%w: digest %q: %v", ErrBadDescriptor, d.Digest, err)
	}
	if d.Size < 0 {
		return fmt.Errorf("%w: size %d", ErrBadDescriptor, d.Size)
	}
	return nil
}

// PushBytes pushes one blob or manifest to repo; one the registry has already is not an
// error.
func PushBytes(ctx context.Context, pusher remotes.Pusher, repo string, desc ocispec.Descriptor, data []byte) error {
	return Push(ctx, pusher, repo, desc, bytes.NewReader(data))
}

// Push pushes one blob or manifest of desc.Size bytes from r to repo; one the registry has
// already is not an error.
func Push(ctx context.Context, pusher remotes.Pusher, repo string, desc ocispec.Descriptor, r io.Reader) error {
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
	if err := content.Copy(ctx, w, r, desc.Size, desc.Digest); err != nil && !errdefs.IsAlreadyExists(err) {
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

// Attach makes the pushed artifact manifest findable under subject in repo: a registry with
// the referrers API lists it already; for one without, Attach adds it to the referrers index
// at the subject's referrers tag and returns the tag ("" when the registry listed it). Two
// attaches updating that index at once can lose one of the two entries (the tag schema has
// no compare-and-swap); attaching again restores it.
func Attach(ctx context.Context, resolver remotes.Resolver, repo string, subject digest.Digest, artifact ocispec.Descriptor) (string, error) {
	listed, err := Referrers(ctx, resolver, repo, subject)
	if err != nil {
		return "", err
	}
	if slices.ContainsFunc(listed, func(d ocispec.Descriptor) bool { return d.Digest == artifact.Digest }) {
		return "", nil
	}
	return AddToReferrersTag(ctx, resolver, repo, subject, artifact)
}

// AddToReferrersTag, the tag-schema step of Attach, adds artifact to the referrers index at subject's referrers tag, creating
// the index when there is none, and returns the tag.
func AddToReferrersTag(ctx context.Context, resolver remotes.Resolver, repo string, subject digest.Digest, artifact ocispec.Descriptor) (string, error) {
	tag := ReferrersTag(subject)
	tagRef := repo + ":" + tag
	idx := index{SchemaVersion: 2, MediaType: ocispec.MediaTypeImageIndex}
	_, desc, err := resolver.Resolve(ctx, tagRef)
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return "", fmt.Errorf("ociartifact: referrers tag %s: %w", tagRef, err)
	default:
		if desc.MediaType != ocispec.MediaTypeImageIndex {
			return "", fmt.Errorf("%w: %s has media type %q", ErrBadIndex, tagRef, desc.MediaType)
		}
		fetcher, err := resolver.Fetcher(ctx, tagRef)
		if err != nil {
			return "", fmt.Errorf("ociartifact: referrers tag %s: %w", tagRef, err)
		}
		data, err := ReadVerified(ctx, fetcher, desc, MaxIndexBytes)
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
		return "", fmt.Errorf("ociartifact: %w", err)
	}
	// A pusher of the tag reference moves the tag to what it pushes.
	pusher, err := resolver.Pusher(ctx, tagRef)
	if err != nil {
		return "", fmt.Errorf("ociartifact: push to %s: %w", tagRef, err)
	}
	if err := PushBytes(ctx, pusher, repo, Descriptor(ocispec.MediaTypeImageIndex, data), data); err != nil {
		return "", fmt.Errorf("ociartifact: push to %s: %w", tagRef, err)
	}
	return tag, nil
}

// Referrers lists every referrer of subject in repo, through containerd's referrers
// fetcher: the referrers API where the registry has it, else the referrers tag. A subject
// with more than MaxReferrers is an error wrapping ErrTooManyReferrers.
func Referrers(ctx context.Context, resolver remotes.Resolver, repo string, subject digest.Digest) ([]ocispec.Descriptor, error) {
	if err := subject.Validate(); err != nil {
		return nil, fmt.Errorf("ociartifact: subject %q: %w", subject, err)
	}
	fetcher, err := resolver.Fetcher(ctx, repo)
	if err != nil {
		return nil, fmt.Errorf("ociartifact: %s: %w", repo, err)
	}
	rf, ok := fetcher.(remotes.ReferrersFetcher)
	if !ok {
		return nil, fmt.Errorf("ociartifact: the resolver for %s cannot list referrers", repo)
	}
	all, err := rf.FetchReferrers(ctx, subject)
	if err != nil {
		return nil, fmt.Errorf("ociartifact: referrers of %s in %s: %w", subject, repo, err)
	}
	if len(all) > MaxReferrers {
		return nil, fmt.Errorf("%w: %s has %d in %s, cap %d", ErrTooManyReferrers, subject, len(all), repo, MaxReferrers)
	}
	return all, nil
}

// ReadVerified reads the content of desc, at most limit bytes, and checks its size and digest.
func ReadVerified(ctx context.Context, fetcher remotes.Fetcher, desc ocispec.Descriptor, limit int64) ([]byte, error) {
	if err := CheckDescriptor(desc); err != nil {
		return nil, err
	}
	if desc.Size > limit {
		return nil, fmt.Errorf("%w: %s of %d bytes, cap %d", ErrTooLarge, desc.Digest, desc.Size, limit)
	}
	rc, err := fetcher.Fetch(ctx, desc)
	if err != nil {
		return nil, fmt.Errorf("ociartifact: fetch %s: %w", desc.Digest, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, desc.Size+1))
	if errdefs.IsFailedPrecondition(err) { // containerd's reader stops at the descriptor's size
		return nil, fmt.Errorf("%w: %s: more than %d bytes: %v", ErrDigestMismatch, desc.Digest, desc.Size, err)
	}
	if err != nil {
		return nil, fmt.Errorf("ociartifact: fetch %s: %w", desc.Digest, err)
	}
	if int64(len(data)) != desc.Size {
		return nil, fmt.Errorf("%w: %s: %d bytes or more, want %d", ErrDigestMismatch, desc.Digest, len(data), desc.Size)
	}
	if got := desc.Digest.Algorithm().FromBytes(data); got != desc.Digest {
		return nil, fmt.Errorf("%w: %s: content has digest %s", ErrDigestMismatch, desc.Digest, got)
	}
	return data, nil
}

// Manifest is the part of an OCI image manifest an artifact uses.
type Manifest struct {
	SchemaVersion int                  `json:"schemaVersion"`
	MediaType     string               `json:"mediaType"`
	ArtifactType  string               `json:"artifactType"`
	Config        ocispec.Descriptor   `json:"config"`
	Layers        []ocispec.Descriptor `json:"layers"`
	Subject       *ocispec.Descriptor  `json:"subject,omitempty"`
	Annotations   map[string]string    `json:"annotations,omitempty"`
}

// index is a referrers list: the image index at a subject's referrers tag.
type index struct {
	SchemaVersion int                  `json:"schemaVersion"`
	MediaType     string               `json:"mediaType"`
	Manifests     []ocispec.Descriptor `json:"manifests"`
}

// parseIndex parses and checks a referrers index: at most MaxReferrers manifests, each with a
// digest and a size.
func parseIndex(data []byte) (index, error) {
	if len(data) > MaxIndexBytes {
		return index{}, fmt.Errorf("%w: referrers index of %d bytes, cap %d", ErrTooLarge, len(data), MaxIndexBytes)
	}
	var idx index
	if err := DecodeStrictJSON(data, &idx); err != nil {
		return index{}, fmt.Errorf("%w: %v", ErrBadIndex, err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != ocispec.MediaTypeImageIndex {
		return index{}, fmt.Errorf("%w: schemaVersion %d, mediaType %q", ErrBadIndex, idx.SchemaVersion, idx.MediaType)
	}
	if len(idx.Manifests) > MaxReferrers {
		return index{}, fmt.Errorf("%w: %d in the referrers index, cap %d", ErrTooManyReferrers, len(idx.Manifests), MaxReferrers)
	}
	for i, d := range idx.Manifests {
		if err := CheckDescriptor(d); err != nil {
			return index{}, fmt.Errorf("%w: manifest %d: %v", ErrBadIndex, i, err)
		}
	}
	return idx, nil
}

// DecodeStrictJSON decodes one JSON value into v and nothing after it. Unknown fields are
// allowed: manifests carry fields obd does not use.
func DecodeStrictJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the JSON value")
	}
	return nil
}
