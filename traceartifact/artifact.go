// Package traceartifact stores start traces in the registry, as OCI artifacts attached to the
// image they were recorded on, so that any node pulling the image can find them. It sits
// between the recorders of traces (`ctr-obd record-trace`, the snapshotter) and the replays
// (bdd's Prefetch, pagetrace's warm-up) on one side, and the registry on the other; the image
// itself is never rewritten.
//
// A start trace artifact is an OCI image manifest (application/vnd.oci.image.manifest.v1+json):
//
//   - artifactType ArtifactType (application/vnd.obd.start-trace.v1);
//   - config: the OCI empty descriptor (application/vnd.oci.empty.v1+json, the 2 bytes "{}");
//   - layers: one block trace (MediaTypeBlocks, blocktrace's JSON encoding: which ranges of which
//     layer blobs the start read, in first-read order), then at most one page trace
//     (MediaTypePages, pagetrace's text format: the file ranges the start left in the page
//     cache); no other layers;
//   - subject: the descriptor of the image manifest the trace was recorded on (a platform
//     manifest, never an index);
//   - annotations: AnnotationCreated (RFC 3339), AnnotationCommand (the command that ran, a JSON
//     array of its arguments; absent when unknown), AnnotationRecorder (what recorded it) and
//     AnnotationTracedBytes (the block trace's ranges' total length, decimal).
//
// Registries with the OCI 1.1 referrers API list the artifact under its subject themselves.
// For the others (distribution 2.8, distribution 3.x), Push maintains the referrers tag schema
// of the distribution spec: an image index tagged <alg>-<hex> of the subject digest that lists
// the subject's referrers. List reads either, through containerd's referrers fetcher.
//
// Everything read from a registry is untrusted: sizes are capped before anything is read,
// every blob is checked against its descriptor's digest, and a trace chosen by Select names
// only blobs of the image, with ranges inside them.
package traceartifact

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/ociartifact"
)

// Media types of a start trace artifact.
const (
	// ArtifactType is the artifactType of a start trace manifest.
	ArtifactType = "application/vnd.obd.start-trace.v1"
	// MediaTypeBlocks is the block trace layer: blocktrace's JSON encoding.
	MediaTypeBlocks = "application/vnd.obd.start-trace.blocks.v1+json"
	// MediaTypePages is the optional page trace layer: pagetrace's text encoding.
	MediaTypePages = "application/vnd.obd.start-trace.pages.v1"
)

// Annotations of a start trace manifest (and of its descriptor in a referrers list).
const (
	AnnotationCreated     = ocispec.AnnotationCreated
	AnnotationCommand     = "org.obdproject.start-trace.command"
	AnnotationRecorder    = "org.obdproject.start-trace.recorder"
	AnnotationTracedBytes = "org.obdproject.start-trace.traced-bytes"
)

// Limits on what is read from a registry. A manifest with two layers and its annotations is
// under 2 KiB; a block trace of a python start is tens of KiB and a page trace about as much.
const (
	// MaxManifestBytes caps an artifact manifest.
	MaxManifestBytes = 64 << 10
	// MaxIndexBytes caps a referrers index.
	MaxIndexBytes = ociartifact.MaxIndexBytes
	// MaxReferrers caps the descriptors of a subject's referrers list, of every artifact type.
	MaxReferrers = ociartifact.MaxReferrers
	// MaxBlocksBytes caps a block trace blob: the most blocktrace.Decode reads.
	MaxBlocksBytes = blocktrace.MaxEncodedBytes
	// MaxPagesBytes caps a page trace blob.
	MaxPagesBytes = 32 << 20
	// MinTracedBytes is the least a plausible start reads: a trace with fewer traced bytes
	// recorded a start whose reads the page cache or bdd's cache hid.
	MinTracedBytes = 4 << 10
)

// Errors, each wrapped with the detail of what was wrong.
var (
	// ErrBadArtifact: a manifest that is not a start trace artifact of the expected subject.
	ErrBadArtifact = errors.New("traceartifact: bad start trace artifact")
	// ErrBadIndex: a referrers index that cannot be read.
	ErrBadIndex = ociartifact.ErrBadIndex
	// ErrTooLarge: a manifest, index or blob over its cap.
	ErrTooLarge = ociartifact.ErrTooLarge
	// ErrDigestMismatch: content that does not match its descriptor's digest or size.
	ErrDigestMismatch = ociartifact.ErrDigestMismatch
	// ErrTooManyReferrers: a subject with more than MaxReferrers referrers.
	ErrTooManyReferrers = ociartifact.ErrTooManyReferrers
	// ErrBadTrace: a trace that does not decode, or does not fit the image.
	ErrBadTrace = errors.New("traceartifact: bad trace")
	// ErrImplausibleTrace: a trace with no ranges or under MinTracedBytes.
	ErrImplausibleTrace = errors.New("traceartifact: implausible trace")
	// ErrNoTrace: no usable start trace artifact for the subject.
	ErrNoTrace = errors.New("traceartifact: no usable start trace")
)

// Trace is the content of a start trace artifact.
type Trace struct {
	Blocks []byte // block trace, blocktrace's encoding
	Pages  []byte // page trace, pagetrace's encoding; nil when there is none
}

// Info describes how a trace was recorded; it becomes the artifact's annotations.
type Info struct {
	Created  time.Time // zero: the time of the push
	Command  []string  // the arguments of the command that ran; nil: unknown
	Recorder string    // e.g. "ctr-obd record-trace"
}

// manifest is the part of an OCI image manifest an artifact uses.
type manifest = ociartifact.Manifest

// parsed is a validated artifact manifest.
type parsed struct {
	blocks      ocispec.Descriptor
	pages       *ocispec.Descriptor
	annotations map[string]string
}

// parseManifest parses and checks an artifact manifest: the media types, the empty config,
// the layers and their caps, and that its subject is subject.
func parseManifest(data []byte, subject digest.Digest) (parsed, error) {
	if len(data) > MaxManifestBytes {
		return parsed{}, fmt.Errorf("%w: manifest of %d bytes, cap %d", ErrTooLarge, len(data), MaxManifestBytes)
	}
	var m manifest
	if err := ociartifact.DecodeStrictJSON(data, &m); err != nil {
		return parsed{}, fmt.Errorf("%w: %v", ErrBadArtifact, err)
	}
	switch {
	case m.SchemaVersion != 2:
		return parsed{}, fmt.Errorf("%w: schemaVersion %d", ErrBadArtifact, m.SchemaVersion)
	case m.MediaType != ocispec.MediaTypeImageManifest:
		return parsed{}, fmt.Errorf("%w: mediaType %q", ErrBadArtifact, m.MediaType)
	case m.ArtifactType != ArtifactType:
		return parsed{}, fmt.Errorf("%w: artifactType %q, want %q", ErrBadArtifact, m.ArtifactType, ArtifactType)
	case !ociartifact.IsEmptyConfig(m.Config):
		return parsed{}, fmt.Errorf("%w: config is not the empty descriptor", ErrBadArtifact)
	case m.Subject == nil:
		return parsed{}, fmt.Errorf("%w: no subject", ErrBadArtifact)
	case m.Subject.Digest != subject:
		return parsed{}, fmt.Errorf("%w: subject %s, want %s", ErrBadArtifact, m.Subject.Digest, subject)
	case len(m.Layers) == 0 || len(m.Layers) > 2:
		return parsed{}, fmt.Errorf("%w: %d layers, want a block trace and at most a page trace", ErrBadArtifact, len(m.Layers))
	}
	var p parsed
	for i, l := range m.Layers {
		if err := checkDescriptor(l); err != nil {
			return parsed{}, fmt.Errorf("%w: layer %d: %v", ErrBadArtifact, i, err)
		}
		switch {
		case l.MediaType == MediaTypeBlocks && i == 0:
			if l.Size > MaxBlocksBytes {
				return parsed{}, fmt.Errorf("%w: block trace of %d bytes, cap %d", ErrTooLarge, l.Size, MaxBlocksBytes)
			}
			p.blocks = l
		case l.MediaType == MediaTypePages && i == 1:
			if l.Size > MaxPagesBytes {
				return parsed{}, fmt.Errorf("%w: page trace of %d bytes, cap %d", ErrTooLarge, l.Size, MaxPagesBytes)
			}
			p.pages = &l
		default:
			return parsed{}, fmt.Errorf("%w: layer %d has media type %q", ErrBadArtifact, i, l.MediaType)
		}
	}
	p.annotations = m.Annotations
	return p, nil
}

// checkDescriptor checks what a fetch relies on: a digest this process can verify and a size.
func checkDescriptor(d ocispec.Descriptor) error { return ociartifact.CheckDescriptor(d) }

// buildManifest returns the artifact manifest for trace blobs already described by blocks and
// pages (nil: none), attached to subject.
func buildManifest(subject, blocks ocispec.Descriptor, pages *ocispec.Descriptor, annotations map[string]string) ([]byte, error) {
	m := manifest{
		SchemaVersion: 2,
		MediaType:     ocispec.MediaTypeImageManifest,
		ArtifactType:  ArtifactType,
		Config:        ociartifact.EmptyConfig(),
		Layers:        []ocispec.Descriptor{blocks},
		Subject:       &ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size},
		Annotations:   annotations,
	}
	if pages != nil {
		m.Layers = append(m.Layers, *pages)
	}
	return json.Marshal(m)
}

// annotationsOf returns the manifest annotations describing a trace of tracedBytes.
func annotationsOf(info Info, tracedBytes int64) (map[string]string, error) {
	created := info.Created
	if created.IsZero() {
		created = time.Now()
	}
	a := map[string]string{
		AnnotationCreated:     created.UTC().Format(time.RFC3339),
		AnnotationTracedBytes: strconv.FormatInt(tracedBytes, 10),
	}
	if info.Recorder != "" {
		a[AnnotationRecorder] = info.Recorder
	}
	if info.Command != nil {
		cmd, err := json.Marshal(info.Command)
		if err != nil {
			return nil, fmt.Errorf("traceartifact: command: %w", err)
		}
		a[AnnotationCommand] = string(cmd)
	}
	return a, nil
}
