package ociindex

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/obdproject/obd/imagelabels"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/lsmt"
)

func testMap() Map {
	return Map{StreamSize: 10 * 512, VirtualSize: 1 << 20, Segments: []lsmt.Segment{
		{Offset: 8, Length: 3, MOffset: 1}, {Offset: 11, Length: 5, Zeroed: true}, {Offset: 64, Length: 8, MOffset: 2},
	}}
}

func TestMapRoundTripAndHostile(t *testing.T) {
	b := EncodeMap(testMap())
	m, err := DecodeMap(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(EncodeMap(m), b) {
		t.Fatal("map does not round-trip")
	}
	for name, f := range map[string]func(m *Map){
		"extent outside the tar": func(m *Map) { m.Segments[2].MOffset = 9 },
		"overlap":                func(m *Map) { m.Segments[1].Offset = 10 },
		"past the disk":          func(m *Map) { m.Segments[2].Offset = 1<<20/512 - 2 },
	} {
		m := testMap()
		f(&m)
		if _, err := DecodeMap(EncodeMap(m)); !errors.Is(err, ErrBadMap) {
			t.Errorf("%s: %v, want ErrBadMap", name, err)
		}
	}
	if _, err := DecodeMap(b[:len(b)-1]); !errors.Is(err, ErrBadMap) {
		t.Errorf("truncated: %v", err)
	}
}

func testLayers() ([]ocispec.Descriptor, []Layer) {
	src := []ocispec.Descriptor{
		{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("a"), Size: 100},
		{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("b"), Size: 200},
	}
	var ls []Layer
	for _, s := range src {
		ls = append(ls, Layer{Source: s,
			GzIndex:      ocispec.Descriptor{MediaType: MediaTypeGzIndex, Digest: digest.FromString("x" + s.Digest.String()), Size: 4000},
			GzIndexTable: digest.FromString("t" + s.Digest.String()), GzIndexTableOffset: 3900,
			Meta: ocispec.Descriptor{MediaType: MediaTypeMeta, Digest: digest.FromString("m" + s.Digest.String()), Size: 9000},
			Map:  ocispec.Descriptor{MediaType: MediaTypeMap, Digest: digest.FromString("p" + s.Digest.String()), Size: 32}})
	}
	return src, ls
}

func TestManifest(t *testing.T) {
	src, ls := testLayers()
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("image"), Size: 300}
	b, err := BuildManifest(subject, ls, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseManifest(b, subject.Digest, src)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1].Meta.Digest != ls[1].Meta.Digest || got[0].Map.Size != 32 ||
		got[1].GzIndexTable != ls[1].GzIndexTable || got[1].GzIndexTableOffset != 3900 {
		t.Fatalf("parsed %+v", got)
	}
	for name, tc := range map[string]struct {
		subject digest.Digest
		layers  []ocispec.Descriptor
		edit    func(string) string
	}{
		"other subject":    {digest.FromString("other"), src, nil},
		"other layers":     {subject.Digest, src[:1], nil},
		"swapped layers":   {subject.Digest, []ocispec.Descriptor{src[1], src[0]}, nil},
		"wrong media type": {subject.Digest, src, func(s string) string { return strings.Replace(s, MediaTypeMap, MediaTypeGzIndex, 1) }},
		"artifact type":    {subject.Digest, src, func(s string) string { return strings.Replace(s, ArtifactType, "x", 1) }},
		"seek index without a table": {subject.Digest, src, func(s string) string {
			return strings.Replace(s, imagelabels.RangeTable+`"`, "x"+`"`, 1)
		}},
		"table outside the seek index": {subject.Digest, src, func(s string) string { return strings.Replace(s, `"3900"`, `"4000"`, 1) }},
	} {
		data := string(b)
		if tc.edit != nil {
			data = tc.edit(data)
		}
		if _, err := ParseManifest([]byte(data), tc.subject, tc.layers); !errors.Is(err, ErrBadArtifact) {
			t.Errorf("%s: %v, want ErrBadArtifact", name, err)
		}
	}
}

func FuzzDecodeMap(f *testing.F) {
	f.Add(EncodeMap(testMap()))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMap(b)
		if err != nil {
			if !errors.Is(err, ErrBadMap) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if !bytes.Equal(EncodeMap(m), b) {
			t.Fatal("accepted map does not re-encode to its bytes")
		}
	})
}

func FuzzParseManifest(f *testing.F) {
	src, ls := testLayers()
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("image"), Size: 300}
	b, _ := BuildManifest(subject, ls, time.Unix(0, 0))
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ParseManifest(b, subject.Digest, src)
		if err != nil {
			if !errors.Is(err, ErrBadArtifact) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		for i, l := range got {
			if l.Source.Digest != src[i].Digest || l.Meta.Size > MaxMetaBytes || l.GzIndex.Size > MaxGzIndexBytes || l.Map.Size > MaxMapBytes {
				t.Fatalf("accepted layer %d: %+v", i, l)
			}
		}
	})
}
