package ckptimage

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/ociartifact"
)

var fuzzSubject = digest.FromString("subject")

// artifactJSON is a checkpoint artifact manifest as Push writes it, with mod applied.
func artifactJSON(t testing.TB, mod func(*ociartifact.Manifest)) []byte {
	blob := digest.FromString("blob")
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: fuzzSubject, Size: 500}
	m := ociartifact.Manifest{SchemaVersion: 2, MediaType: ocispec.MediaTypeImageManifest, ArtifactType: ArtifactType,
		Config: ociartifact.EmptyConfig(), Subject: &subject,
		Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: blob, Size: 8192, Annotations: map[string]string{
			imagelabels.BlobDigest: blob.String(), imagelabels.BlobSize: "8192",
			imagelabels.RangeTable: digest.FromString("table").String(), imagelabels.RangeTableOffset: "8000"}}},
		Annotations: map[string]string{AnnotationCreated: time.Unix(1e9, 0).UTC().Format(time.RFC3339Nano), AnnotationCRIU: "4.1.1", AnnotationFunction: "fn"}}
	if mod != nil {
		mod(&m)
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestParse(t *testing.T) {
	c, err := Parse(artifactJSON(t, nil), fuzzSubject)
	if err != nil || c.Info.Function != "fn" || c.Info.CRIU != "4.1.1" || c.Layer.Size != 8192 || c.Layer.RangeTableOffset != 8000 {
		t.Fatalf("Parse = %+v, %v", c, err)
	}
	for name, mod := range map[string]func(*ociartifact.Manifest){
		"another artifact type":        func(m *ociartifact.Manifest) { m.ArtifactType = "application/vnd.obd.start-trace.v1" },
		"no subject":                   func(m *ociartifact.Manifest) { m.Subject = nil },
		"two layers":                   func(m *ociartifact.Manifest) { m.Layers = append(m.Layers, m.Layers[0]) },
		"a plain layer":                func(m *ociartifact.Manifest) { m.Layers[0].Annotations = nil },
		"a layer that is not its blob": func(m *ociartifact.Manifest) { m.Layers[0].Digest = digest.FromString("other") },
		"no creation time":             func(m *ociartifact.Manifest) { delete(m.Annotations, AnnotationCreated) },
	} {
		if _, err := Parse(artifactJSON(t, mod), fuzzSubject); !errors.Is(err, ErrBadArtifact) {
			t.Errorf("%s: err = %v, want ErrBadArtifact", name, err)
		}
	}
	if _, err := Parse(artifactJSON(t, nil), digest.FromString("another image")); !errors.Is(err, ErrBadArtifact) {
		t.Errorf("another subject: err = %v, want ErrBadArtifact", err)
	}
}

// FuzzParse: a checkpoint artifact manifest comes from a registry. Parse never panics, fails
// only with ErrBadArtifact, and what it accepts is one overlaybd layer of a valid digest and
// size, with a range table inside the blob if any.
func FuzzParse(f *testing.F) {
	f.Add(artifactJSON(f, nil))
	f.Add(artifactJSON(f, func(m *ociartifact.Manifest) { m.Layers[0].Annotations[imagelabels.RangeTableOffset] = "9000" }))
	f.Add([]byte(`{"schemaVersion":2}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, fuzzSubject)
		if err != nil {
			if !errors.Is(err, ErrBadArtifact) {
				t.Fatalf("Parse: %v, want ErrBadArtifact", err)
			}
			return
		}
		l := c.Layer
		if l.Digest.Validate() != nil || imagelabels.CheckBlobSize(l.Size) != nil ||
			(l.RangeTable != "" && (l.RangeTableOffset <= 0 || l.RangeTableOffset >= l.Size)) {
			t.Fatalf("accepted layer %+v", l)
		}
	})
}
