package ctrplugin

import (
	"context"
	"errors"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/imagelabels"
)

func overlaybdLayer(blob digest.Digest) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromString("tar of " + blob.String()),
		Annotations: map[string]string{imagelabels.BlobDigest: blob.String(), imagelabels.BlobSize: "4096"}}
}

func TestOverlaybdBlobs(t *testing.T) {
	lower, upper := digest.FromString("lower"), digest.FromString("upper")
	got, err := overlaybdBlobs(ocispec.Manifest{Layers: []ocispec.Descriptor{overlaybdLayer(lower), overlaybdLayer(upper)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != lower || got[1] != upper {
		t.Fatalf("overlaybdBlobs = %v, want [%s %s]", got, lower, upper)
	}

	plain := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("plain")}
	bad := overlaybdLayer(lower)
	bad.Annotations[imagelabels.BlobDigest] = "sha256:short"
	for name, m := range map[string]ocispec.Manifest{
		"no layers":         {},
		"a plain layer":     {Layers: []ocispec.Descriptor{overlaybdLayer(lower), plain}},
		"a malformed label": {Layers: []ocispec.Descriptor{bad}},
	} {
		if _, err := overlaybdBlobs(m); !errors.Is(err, ErrNotOverlaybd) {
			t.Errorf("%s: err = %v, want ErrNotOverlaybd", name, err)
		}
	}
}

// staticChildren is a handler returning fixed children, as the pull's fetch handler would.
func staticChildren(children ...ocispec.Descriptor) images.Handler {
	return images.HandlerFunc(func(context.Context, ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		return children, nil
	})
}

func TestLazyLayerLabels(t *testing.T) {
	const ref = "registry.local/app:v1-obd"
	manifest := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("manifest")}
	config := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromString("config")}
	layer := overlaybdLayer(digest.FromString("blob"))

	children, err := lazyLayerLabels(ref)(staticChildren(config, layer)).Handle(context.Background(), manifest)
	if err != nil {
		t.Fatal(err)
	}
	if got := children[1].Annotations[imagelabels.ImageRef]; got != ref {
		t.Fatalf("layer's %s = %q, want %q", imagelabels.ImageRef, got, ref)
	}
	if got := children[1].Annotations[imagelabels.CRIManifestDigest]; got != manifest.Digest.String() {
		t.Fatalf("layer's %s = %q, want the manifest's digest %s", imagelabels.CRIManifestDigest, got, manifest.Digest)
	}
	if _, ok := layer.Annotations[imagelabels.ImageRef]; ok {
		t.Fatal("the handler changed the annotations map of its input")
	}
	if _, ok := children[0].Annotations[imagelabels.ImageRef]; ok {
		t.Fatal("the config descriptor was labelled as a layer")
	}

	plain := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("plain")}
	if _, err := lazyLayerLabels(ref)(staticChildren(config, plain)).Handle(context.Background(), manifest); !errors.Is(err, ErrNotOverlaybd) {
		t.Fatalf("a plain layer: err = %v, want ErrNotOverlaybd before any download", err)
	}
	// Children of an index are manifests, not layers: passed through untouched.
	index := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromString("index")}
	if children, err := lazyLayerLabels(ref)(staticChildren(manifest)).Handle(context.Background(), index); err != nil || len(children) != 1 || children[0].Annotations != nil {
		t.Fatalf("index children = %v, %v; want the manifest unchanged", children, err)
	}
}

// rpull's replay pins the trace's blobs with the range tables the manifest gives.
func TestPinTraceFromManifest(t *testing.T) {
	blob, table := digest.FromString("blob"), digest.FromString("table")
	layer := overlaybdLayer(blob)
	layer.Size = 4096
	layer.Annotations[imagelabels.RangeTable] = table.String()
	layer.Annotations[imagelabels.RangeTableOffset] = "4000"
	raw, err := blocktrace.Trace{Blobs: []blocktrace.Blob{{Ref: "r/x", Digest: blob, Size: 4096, Ranges: []blocktrace.Range{{Off: 0, Len: 1}}}}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := blocktrace.Decode(pinTrace(raw, ocispec.Manifest{Layers: []ocispec.Descriptor{layer}}))
	if err != nil || got.Blobs[0].RangeTable != table || got.Blobs[0].RangeTableOffset != 4000 || got.Blobs[0].Ref != "r/x" {
		t.Fatalf("pinned %+v (%v)", got, err)
	}
}
