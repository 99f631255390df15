package ociindex

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/ociartifact"
)

// Media types of an index artifact.
const (
	// ArtifactType is the artifactType of an index manifest.
	ArtifactType = "application/vnd.obd.oci-index.v1"
	// MediaTypeGzIndex is a layer's seek index (gzindex's encoding).
	MediaTypeGzIndex = "application/vnd.obd.oci-index.gzindex.v1"
	// MediaTypeMeta is a layer's metadata layer: an overlaybd layer blob.
	MediaTypeMeta = "application/vnd.obd.oci-index.meta.v1.tar"
	// MediaTypeMap is a layer's map (EncodeMap's encoding).
	MediaTypeMap = "application/vnd.obd.oci-index.map.v1"
)

// Annotations of an index manifest and its layers.
const (
	AnnotationCreated = ocispec.AnnotationCreated
	// AnnotationLayer, on each blob of the artifact, is the digest of the image
	// layer it indexes.
	AnnotationLayer = "org.obdproject.oci-index.layer"
)

// Caps on what a reader fetches.
const (
	MaxManifestBytes = 1 << 20
	MaxGzIndexBytes  = 256 << 20
	MaxMapBytes      = mapHeaderSize + MaxMapRecords*16
	// MaxMetaBytes caps a metadata layer blob (read lazily like any layer).
	MaxMetaBytes = 4 << 30
)

// ErrBadArtifact reports a manifest that is not an index artifact of the
// expected image.
var ErrBadArtifact = errors.New("ociindex: bad index artifact")

// Layer is one image layer and the blobs that index it.
type Layer struct {
	Source  ocispec.Descriptor // the image's layer blob, unchanged
	GzIndex ocispec.Descriptor
	Meta    ocispec.Descriptor
	Map     ocispec.Descriptor
	// GzIndexTable and GzIndexTableOffset pin the range table appended to the
	// seek index blob (its descriptor's imagelabels.RangeTable annotations), so
	// that a reader can fetch the index in pieces: its head first, each window
	// when a read needs it.
	GzIndexTable       digest.Digest
	GzIndexTableOffset int64
}

// manifest is the part of an OCI image manifest an artifact uses.
type manifest = ociartifact.Manifest

// BuildManifest returns the index artifact manifest of the image manifest
// subject: per image layer, in order, its seek index, metadata layer and map.
func BuildManifest(subject ocispec.Descriptor, layers []Layer, created time.Time) ([]byte, error) {
	m := manifest{
		SchemaVersion: 2,
		MediaType:     ocispec.MediaTypeImageManifest,
		ArtifactType:  ArtifactType,
		Config:        ociartifact.EmptyConfig(),
		Subject:       &ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size},
		Annotations:   map[string]string{AnnotationCreated: created.UTC().Format(time.RFC3339)},
	}
	for _, l := range layers {
		for k, d := range []ocispec.Descriptor{l.GzIndex, l.Meta, l.Map} {
			a := map[string]string{AnnotationLayer: l.Source.Digest.String()}
			if k == 0 {
				a[imagelabels.RangeTable] = l.GzIndexTable.String()
				a[imagelabels.RangeTableOffset] = strconv.FormatInt(l.GzIndexTableOffset, 10)
			}
			m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, Annotations: a})
		}
	}
	return json.Marshal(m)
}

// ParseManifest checks an index artifact manifest against its image: its
// subject is subject, and it indexes exactly imageLayers, in order, with blobs
// of the right media types within the caps.
func ParseManifest(data []byte, subject digest.Digest, imageLayers []ocispec.Descriptor) ([]Layer, error) {
	if len(data) > MaxManifestBytes {
		return nil, fmt.Errorf("%w: manifest of %d bytes, cap %d", ErrBadArtifact, len(data), MaxManifestBytes)
	}
	var m manifest
	if err := ociartifact.DecodeStrictJSON(data, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadArtifact, err)
	}
	switch {
	case m.SchemaVersion != 2 || m.MediaType != ocispec.MediaTypeImageManifest:
		return nil, fmt.Errorf("%w: schemaVersion %d, mediaType %q", ErrBadArtifact, m.SchemaVersion, m.MediaType)
	case m.ArtifactType != ArtifactType:
		return nil, fmt.Errorf("%w: artifactType %q, want %q", ErrBadArtifact, m.ArtifactType, ArtifactType)
	case !ociartifact.IsEmptyConfig(m.Config):
		return nil, fmt.Errorf("%w: config is not the empty descriptor", ErrBadArtifact)
	case m.Subject == nil || m.Subject.Digest != subject:
		return nil, fmt.Errorf("%w: subject is not %s", ErrBadArtifact, subject)
	case len(m.Layers) != 3*len(imageLayers):
		return nil, fmt.Errorf("%w: %d blobs for %d image layers, want 3 each", ErrBadArtifact, len(m.Layers), len(imageLayers))
	}
	out := make([]Layer, len(imageLayers))
	kinds := []struct {
		mediaType string
		max       int64
	}{{MediaTypeGzIndex, MaxGzIndexBytes}, {MediaTypeMeta, MaxMetaBytes}, {MediaTypeMap, MaxMapBytes}}
	for i, src := range imageLayers {
		out[i].Source = src
		for k, kind := range kinds {
			d := m.Layers[3*i+k]
			switch err := ociartifact.CheckDescriptor(d); {
			case err != nil:
				return nil, fmt.Errorf("%w: layer %d: %v", ErrBadArtifact, i+1, err)
			case d.MediaType != kind.mediaType:
				return nil, fmt.Errorf("%w: layer %d: blob %d has media type %q, want %q", ErrBadArtifact, i+1, k, d.MediaType, kind.mediaType)
			case d.Size == 0 || d.Size > kind.max:
				return nil, fmt.Errorf("%w: layer %d: %s of %d bytes (1 to %d)", ErrBadArtifact, i+1, kind.mediaType, d.Size, kind.max)
			case d.Annotations[AnnotationLayer] != src.Digest.String():
				return nil, fmt.Errorf("%w: layer %d: blob indexes %q, the image has %s", ErrBadArtifact, i+1, d.Annotations[AnnotationLayer], src.Digest)
			}
			table, tableOff := d.Annotations[imagelabels.RangeTable], d.Annotations[imagelabels.RangeTableOffset]
			if k != 0 && (table != "" || tableOff != "") {
				return nil, fmt.Errorf("%w: layer %d: %s has a range table", ErrBadArtifact, i+1, kind.mediaType)
			}
			d.Annotations = nil
			switch k {
			case 0:
				var err error
				out[i].GzIndexTable, out[i].GzIndexTableOffset, err = imagelabels.ParseRangeTable(table, tableOff, d.Size)
				if err != nil || out[i].GzIndexTable == "" {
					return nil, fmt.Errorf("%w: layer %d: seek index without a valid range table: %v", ErrBadArtifact, i+1, err)
				}
				out[i].GzIndex = d
			case 1:
				out[i].Meta = d
			case 2:
				out[i].Map = d
			}
		}
	}
	return out, nil
}
