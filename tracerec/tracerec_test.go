package tracerec

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
	armOnly := good
	armOnly.Platform = &arm64
	amdGood := good
	amdGood.Platform = &amd64
	index := b.add(t, ocispec.MediaTypeImageIndex, ocispec.Index{Manifests: []ocispec.Descriptor{armOnly, amdGood}})
	armIndex := b.add(t, ocispec.MediaTypeImageIndex, ocispec.Index{Manifests: []ocispec.Descriptor{armOnly}})

	img, err := resolveImage(ctx, b, "registry.test/app:obd", index, platforms.Only(amd64))
	if err != nil {
		t.Fatal(err)
	}
	if img.manifest.Digest != good.Digest || len(img.layers) != 1 || img.layers[0].Digest != blob || img.layers[0].Size != 8192 ||
		img.config.User != "app" || img.config.Cmd[0] != "python3" {
		t.Fatalf("resolved %+v, want the amd64 manifest, its overlaybd blob and config", img)
	}

	corrupt := good
	b[digest.FromString("corrupt")] = []byte("{}")
	corrupt.Digest = digest.FromString("corrupt")
	for _, tc := range []struct {
		name string
		desc ocispec.Descriptor
		want string
	}{
		{"no manifest for the platform", armIndex, "no manifest for this platform"},
		{"a plain layer", plain, "not an overlaybd layer"},
		{"content that is not its digest's", corrupt, "does not match its descriptor"},
		{"a config as the image", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: good.Digest, Size: good.Size}, "is not an image manifest or index"},
	} {
		if _, err := resolveImage(ctx, b, "registry.test/app:obd", tc.desc, platforms.Only(amd64)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestQuote(t *testing.T) {
	got := quote([]string{"python3", "-c", "print('x')", "", "a=b/c"})
	if want := `python3 -c "print('x')" "" a=b/c`; got != want {
		t.Fatalf("quote = %s, want %s", got, want)
	}
}
