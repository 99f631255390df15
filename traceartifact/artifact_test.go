package traceartifact

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

var (
	testSubject = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("image manifest"), Size: 512}
	testBlocks  = blobDescriptor(MediaTypeBlocks, []byte("blocks"))
	testPages   = blobDescriptor(MediaTypePages, []byte("pages"))
)

// validManifest is a start trace manifest as Push writes it, as a generic JSON object to
// mutate.
func validManifest(t testing.TB) map[string]any {
	t.Helper()
	data, err := buildManifest(testSubject, testBlocks, &testPages, map[string]string{AnnotationTracedBytes: "4096"})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func encode(t testing.TB, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestParseManifestAcceptsPushed(t *testing.T) {
	p, err := parseManifest(encode(t, validManifest(t)), testSubject.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if p.blocks.Digest != testBlocks.Digest || p.pages == nil || p.pages.Digest != testPages.Digest || p.annotations[AnnotationTracedBytes] != "4096" {
		t.Errorf("parsed %+v", p)
	}
	withoutPages, err := buildManifest(testSubject, testBlocks, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := parseManifest(withoutPages, testSubject.Digest); err != nil || p.pages != nil {
		t.Errorf("manifest without a page trace: %+v, %v", p, err)
	}
}

func TestParseManifestRejects(t *testing.T) {
	layer := func(mediaType string, size int64) map[string]any {
		return map[string]any{"mediaType": mediaType, "digest": testBlocks.Digest.String(), "size": size}
	}
	for _, tc := range []struct {
		name   string
		mutate func(m map[string]any)
		raw    string // instead of the mutated manifest
		want   error
	}{
		{name: "garbage", raw: "\x00\x01not json", want: ErrBadArtifact},
		{name: "trailing data", raw: `{"schemaVersion":2} {}`, want: ErrBadArtifact},
		{name: "array", raw: `[1,2,3]`, want: ErrBadArtifact},
		{name: "oversized", raw: `{"x":"` + strings.Repeat("a", MaxManifestBytes) + `"}`, want: ErrTooLarge},
		{name: "schema version", mutate: func(m map[string]any) { m["schemaVersion"] = 1 }, want: ErrBadArtifact},
		{name: "index media type", mutate: func(m map[string]any) { m["mediaType"] = ocispec.MediaTypeImageIndex }, want: ErrBadArtifact},
		{name: "other artifact type", mutate: func(m map[string]any) { m["artifactType"] = "application/vnd.example.sbom" }, want: ErrBadArtifact},
		{name: "no artifact type", mutate: func(m map[string]any) { delete(m, "artifactType") }, want: ErrBadArtifact},
		{name: "image config", mutate: func(m map[string]any) {
			m["config"] = map[string]any{"mediaType": ocispec.MediaTypeImageConfig, "digest": testBlocks.Digest.String(), "size": 6}
		}, want: ErrBadArtifact},
		{name: "no subject", mutate: func(m map[string]any) { delete(m, "subject") }, want: ErrBadArtifact},
		{name: "other subject", mutate: func(m map[string]any) {
			m["subject"] = map[string]any{"mediaType": ocispec.MediaTypeImageManifest, "digest": digest.FromString("other").String(), "size": 1}
		}, want: ErrBadArtifact},
		{name: "no layers", mutate: func(m map[string]any) { m["layers"] = []any{} }, want: ErrBadArtifact},
		{name: "three layers", mutate: func(m map[string]any) {
			m["layers"] = []any{layer(MediaTypeBlocks, 6), layer(MediaTypePages, 6), layer(MediaTypePages, 6)}
		}, want: ErrBadArtifact},
		{name: "pages only", mutate: func(m map[string]any) { m["layers"] = []any{layer(MediaTypePages, 6)} }, want: ErrBadArtifact},
		{name: "two block traces", mutate: func(m map[string]any) { m["layers"] = []any{layer(MediaTypeBlocks, 6), layer(MediaTypeBlocks, 6)} }, want: ErrBadArtifact},
		{name: "tar layer", mutate: func(m map[string]any) { m["layers"] = []any{layer(ocispec.MediaTypeImageLayerGzip, 6)} }, want: ErrBadArtifact},
		{name: "bad layer digest", mutate: func(m map[string]any) {
			m["layers"] = []any{map[string]any{"mediaType": MediaTypeBlocks, "digest": "sha256:short", "size": 6}}
		}, want: ErrBadArtifact},
		{name: "unknown digest algorithm", mutate: func(m map[string]any) {
			m["layers"] = []any{map[string]any{"mediaType": MediaTypeBlocks, "digest": "md5:d41d8cd98f00b204e9800998ecf8427e", "size": 6}}
		}, want: ErrBadArtifact},
		{name: "negative size", mutate: func(m map[string]any) { m["layers"] = []any{layer(MediaTypeBlocks, -1)} }, want: ErrBadArtifact},
		{name: "huge block trace", mutate: func(m map[string]any) { m["layers"] = []any{layer(MediaTypeBlocks, MaxBlocksBytes+1)} }, want: ErrTooLarge},
		{name: "huge page trace", mutate: func(m map[string]any) {
			m["layers"] = []any{layer(MediaTypeBlocks, 6), layer(MediaTypePages, MaxPagesBytes+1)}
		}, want: ErrTooLarge},
		{name: "layers not a list", mutate: func(m map[string]any) { m["layers"] = "blocks" }, want: ErrBadArtifact},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(tc.raw)
			if tc.raw == "" {
				m := validManifest(t)
				tc.mutate(m)
				data = encode(t, m)
			}
			if _, err := parseManifest(data, testSubject.Digest); !errors.Is(err, tc.want) {
				t.Errorf("error = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestCheckPlausible(t *testing.T) {
	for _, tc := range []struct {
		s    Summary
		fail bool
	}{
		{Summary{}, true},
		{Summary{Blobs: 1, Ranges: 1, Bytes: MinTracedBytes - 1}, true},
		{Summary{Blobs: 1, Ranges: 1, Bytes: MinTracedBytes}, false},
	} {
		err := tc.s.CheckPlausible()
		if (err != nil) != tc.fail || (err != nil && !errors.Is(err, ErrImplausibleTrace)) {
			t.Errorf("CheckPlausible(%+v) = %v", tc.s, err)
		}
	}
}

// FuzzParseManifest: no input panics, and an accepted manifest respects the caps and names a
// block trace.
func FuzzParseManifest(f *testing.F) {
	m := validManifest(f)
	f.Add(encode(f, m))
	m["layers"] = []any{m["layers"].([]any)[0]}
	f.Add(encode(f, m))
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := parseManifest(data, testSubject.Digest)
		if err != nil {
			if !errors.Is(err, ErrBadArtifact) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if p.blocks.MediaType != MediaTypeBlocks || p.blocks.Size > MaxBlocksBytes || p.blocks.Digest.Validate() != nil {
			t.Fatalf("accepted block trace %+v", p.blocks)
		}
		if p.pages != nil && (p.pages.MediaType != MediaTypePages || p.pages.Size > MaxPagesBytes) {
			t.Fatalf("accepted page trace %+v", *p.pages)
		}
	})
}
