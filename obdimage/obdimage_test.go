package obdimage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/imagelabels"
)

// blobs is a registry's content by digest, as a remotes.Resolver's fetcher serves it.
type blobs map[digest.Digest][]byte

func (b blobs) Resolve(context.Context, string) (string, ocispec.Descriptor, error) {
	return "", ocispec.Descriptor{}, errors.New("not used")
}
func (b blobs) Fetcher(context.Context, string) (remotes.Fetcher, error) { return b, nil }
func (b blobs) Pusher(context.Context, string) (remotes.Pusher, error) {
	return nil, errors.New("not used")
}

func (b blobs) Fetch(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	data, ok := b[desc.Digest]
	if !ok {
		return nil, errors.New("not found")
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

// add stores v as JSON and returns its descriptor.
func (b blobs) add(t *testing.T, mediaType string, v any) ocispec.Descriptor {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(data)
	b[d] = data
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}
}

// image stores a one-layer image whose layer has annotations and returns its manifest.
func (b blobs) image(t *testing.T, annotations map[string]string) ocispec.Descriptor {
	t.Helper()
	config := b.add(t, ocispec.MediaTypeImageConfig, ocispec.Image{Config: ocispec.ImageConfig{Cmd: []string{"python3"}, User: "app"}})
	layer := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromString("layer"), Size: 4096, Annotations: annotations}
	return b.add(t, ocispec.MediaTypeImageManifest, ocispec.Manifest{Versioned: specsVersion, Config: config, Layers: []ocispec.Descriptor{layer}})
}

var specsVersion = ocispec.Manifest{}.Versioned

func TestResolveImage(t *testing.T) {
	ctx := context.Background()
	amd64, arm64 := platforms.MustParse("linux/amd64"), platforms.MustParse("linux/arm64")
	b := blobs{}
	blob := digest.FromString("overlaybd blob")
	good := b.image(t, map[string]string{imagelabels.BlobDigest: blob.String(), imagelabels.BlobSize: "8192"})
	plain := b.image(t, nil)
	badTable := b.image(t, map[string]string{imagelabels.BlobDigest: blob.String(), imagelabels.BlobSize: "8192",
		imagelabels.RangeTable: blob.String(), imagelabels.RangeTableOffset: "9000"})
	armOnly := good
	armOnly.Platform = &arm64
	amdGood := good
	amdGood.Platform = &amd64
	index := b.add(t, ocispec.MediaTypeImageIndex, ocispec.Index{Manifests: []ocispec.Descriptor{armOnly, amdGood}})
	armIndex := b.add(t, ocispec.MediaTypeImageIndex, ocispec.Index{Manifests: []ocispec.Descriptor{armOnly}})

	img, err := Read(ctx, b, "registry.test/app:obd", index, platforms.Only(amd64))
	if err != nil {
		t.Fatal(err)
	}
	if img.Manifest.Digest != good.Digest || len(img.Layers) != 1 || img.Layers[0].Digest != blob || img.Layers[0].Size != 8192 ||
		img.Config.User != "app" || img.Config.Cmd[0] != "python3" || img.Repository != "registry.test/app" {
		t.Fatalf("resolved %+v, want the amd64 manifest, its overlaybd blob and config", img)
	}

	corrupt := good
	b[digest.FromString("corrupt")] = []byte("{}")
	corrupt.Digest = digest.FromString("corrupt")
	for _, tc := range []struct {
		name string
		desc ocispec.Descriptor
		want error
		text string
	}{
		{"no manifest for the platform", armIndex, ErrNoPlatform, "no manifest for this platform"},
		{"a plain layer", plain, ErrNotOverlaybd, "not an overlaybd layer"},
		{"a bad range table", badTable, ErrNotOverlaybd, imagelabels.RangeTableOffset},
		{"content that is not its digest's", corrupt, ErrBadContent, "digest mismatch"},
		{"a config as the image", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: good.Digest, Size: good.Size}, ErrBadContent, "is not an image manifest or index"},
	} {
		if _, err := Read(ctx, b, "registry.test/app:obd", tc.desc, platforms.Only(amd64)); !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: err = %v, want %v with %q", tc.name, err, tc.want, tc.text)
		}
	}
	tabled := b.image(t, map[string]string{imagelabels.BlobDigest: blob.String(), imagelabels.BlobSize: "8192",
		imagelabels.RangeTable: blob.String(), imagelabels.RangeTableOffset: "8000"})
	img, err = Read(ctx, b, "registry.test/app:obd", tabled, nil)
	if err != nil || img.Layers[0].RangeTable != blob || img.Layers[0].RangeTableOffset != 8000 {
		t.Fatalf("a layer with a range table: %+v, %v", img.Layers, err)
	}
}
