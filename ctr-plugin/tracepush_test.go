package ctrplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/imagelabels"
)

// storedImage is an image in a real local content store; only what platformManifest asks of
// an image is answered.
type storedImage struct {
	containerd.Image // nil: any other method panics
	cs               content.Store
	target           ocispec.Descriptor
	platform         platforms.MatchComparer
}

func (i storedImage) Name() string                      { return "registry.test/app:1" }
func (i storedImage) Target() ocispec.Descriptor        { return i.target }
func (i storedImage) ContentStore() content.Store       { return i.cs }
func (i storedImage) Platform() platforms.MatchComparer { return i.platform }

func writeJSON(t *testing.T, cs content.Store, mediaType string, v any) ocispec.Descriptor {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
	if err := content.WriteBlob(context.Background(), cs, desc.Digest.String(), bytes.NewReader(data), desc); err != nil {
		t.Fatal(err)
	}
	return desc
}

// TestPlatformManifest: an index's manifest for the image's platform is the subject, with its
// overlaybd blobs as the layers.
func TestPlatformManifest(t *testing.T) {
	cs, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var manifests []ocispec.Descriptor
	for _, arch := range []string{"amd64", "arm64"} {
		config := writeJSON(t, cs, ocispec.MediaTypeImageConfig, ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: arch}})
		layer := overlaybdLayer(digest.FromString("blob of " + arch))
		desc := writeJSON(t, cs, ocispec.MediaTypeImageManifest, ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2},
			MediaType: ocispec.MediaTypeImageManifest, Config: config, Layers: []ocispec.Descriptor{layer}})
		desc.Platform = &ocispec.Platform{OS: "linux", Architecture: arch}
		manifests = append(manifests, desc)
	}
	index := writeJSON(t, cs, ocispec.MediaTypeImageIndex, ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex, Manifests: manifests})

	for i, arch := range []string{"amd64", "arm64"} {
		img := storedImage{cs: cs, target: index, platform: platforms.Only(ocispec.Platform{OS: "linux", Architecture: arch})}
		desc, manifest, err := platformManifest(context.Background(), img)
		if err != nil {
			t.Fatal(err)
		}
		if desc.Digest != manifests[i].Digest {
			t.Errorf("%s: subject %s, want %s", arch, desc.Digest, manifests[i].Digest)
		}
		layers, err := overlaybdLayers(manifest)
		if err != nil {
			t.Fatal(err)
		}
		if want := digest.FromString("blob of " + arch); len(layers) != 1 || layers[0].Digest != want || layers[0].Size != 4096 {
			t.Errorf("%s: layers %v, want %s of 4096 bytes", arch, layers, want)
		}
	}
	img := storedImage{cs: cs, target: manifests[1], platform: platforms.Only(ocispec.Platform{OS: "linux", Architecture: "arm64"})}
	if desc, _, err := platformManifest(context.Background(), img); err != nil || desc.Digest != manifests[1].Digest {
		t.Errorf("a manifest target: subject %s, %v; want the target", desc.Digest, err)
	}
	img.platform = platforms.Only(ocispec.Platform{OS: "windows", Architecture: "amd64"})
	img.target = index
	if _, _, err := platformManifest(context.Background(), img); err == nil {
		t.Error("an index without the platform: no error")
	}
}

func TestOverlaybdLayersNeedSizes(t *testing.T) {
	layer := overlaybdLayer(digest.FromString("blob"))
	for _, size := range []string{"", "0", "-1", "x"} {
		layer.Annotations[imagelabels.BlobSize] = size
		if _, err := overlaybdLayers(ocispec.Manifest{Layers: []ocispec.Descriptor{layer}}); !errors.Is(err, ErrNotOverlaybd) {
			t.Errorf("blob size %q: err = %v, want ErrNotOverlaybd", size, err)
		}
	}
}
