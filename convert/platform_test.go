package convert_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/convert/internal/fixture"
)

// multiPlatformLayout writes oci:DIR:multi, an index of ArchImages.
func multiPlatformLayout(t *testing.T, dir string, arches ...string) string {
	t.Helper()
	images, err := fixture.ArchImages(arches...)
	if err != nil {
		t.Fatal(err)
	}
	if err := fixture.WriteMultiPlatform(dir, "multi", images); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestConvertMultiPlatform converts an image index: every platform by
// default, only the chosen ones with Options.Platforms; each converted image
// holds its own platform's files.
func TestConvertMultiPlatform(t *testing.T) {
	requireDevices(t)
	tmp := t.TempDir()
	src := multiPlatformLayout(t, filepath.Join(tmp, "src"), "amd64", "arm64", "riscv64")
	for _, tc := range []struct {
		platforms []string
		want      []string
	}{
		{nil, []string{"amd64", "arm64", "riscv64"}},
		{[]string{"linux/arm64", "linux/riscv64"}, []string{"arm64", "riscv64"}},
	} {
		name := strings.Join(tc.platforms, ",")
		dst := filepath.Join(tmp, "dst-"+strings.ReplaceAll(name, "/", "_"))
		c, err := convert.New(convert.Options{WorkDir: filepath.Join(tmp, "work"), VirtualSize: 128 << 20, Platforms: tc.platforms})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Convert(context.Background(), "oci:"+src+":multi", "oci:"+dst+":obd"); err != nil {
			t.Fatalf("platforms %q: %v", name, err)
		}
		var top ocispec.Index
		readJSON(t, filepath.Join(dst, "index.json"), &top)
		if len(top.Manifests) != 1 || top.Manifests[0].MediaType != ocispec.MediaTypeImageIndex {
			t.Fatalf("platforms %q: index.json names %+v, want one image index", name, top.Manifests)
		}
		var idx ocispec.Index
		readJSON(t, blobPath(dst, top.Manifests[0].Digest.Encoded()), &idx)
		var got []string
		for _, m := range idx.Manifests {
			if m.Platform == nil {
				t.Fatalf("platforms %q: manifest %s lost its platform", name, m.Digest)
			}
			got = append(got, m.Platform.Architecture)
			var man ocispec.Manifest
			readJSON(t, blobPath(dst, m.Digest.Encoded()), &man)
			b, err := os.ReadFile(filepath.Join(mountConverted(t, dst, man), "etc/arch"))
			if err != nil || string(b) != m.Platform.Architecture+"\n" {
				t.Errorf("platforms %q: %s image has etc/arch %q, %v", name, m.Platform.Architecture, b, err)
			}
		}
		sort.Strings(got)
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("platforms %q: converted %v, want %v", name, got, tc.want)
		}
	}
}

// TestConvertMixedIndex converts an index in which one platform is already an
// overlaybd image: that one is copied unchanged, the other converted.
func TestConvertMixedIndex(t *testing.T) {
	requireDevices(t)
	tmp := t.TempDir()
	src := multiPlatformLayout(t, filepath.Join(tmp, "src"), "amd64", "arm64")
	ctx := context.Background()
	c, err := convert.New(convert.Options{WorkDir: filepath.Join(tmp, "work"), VirtualSize: 128 << 20, Platforms: []string{"linux/amd64"}})
	if err != nil {
		t.Fatal(err)
	}
	// Convert amd64 into the source layout itself, then index it next to the
	// original arm64 image.
	res, err := c.Convert(ctx, "oci:"+src+":multi", "oci:"+src+":amd64-obd")
	if err != nil {
		t.Fatal(err)
	}
	var convertedIdx, origIdx, top ocispec.Index
	readJSON(t, blobPath(src, res.Descriptor.Digest.Encoded()), &convertedIdx)
	readJSON(t, filepath.Join(src, "index.json"), &top)
	for _, m := range top.Manifests {
		if m.Annotations[ocispec.AnnotationRefName] == "multi" {
			readJSON(t, blobPath(src, m.Digest.Encoded()), &origIdx)
		}
	}
	mixed := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{convertedIdx.Manifests[0]}}
	mixed.SchemaVersion = 2
	for _, m := range origIdx.Manifests {
		if m.Platform.Architecture == "arm64" {
			mixed.Manifests = append(mixed.Manifests, m)
		}
	}
	b, _ := json.Marshal(mixed)
	d := digest.FromBytes(b)
	if err := os.WriteFile(blobPath(src, d.Encoded()), b, 0o644); err != nil {
		t.Fatal(err)
	}
	top.Manifests = append(top.Manifests, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: d, Size: int64(len(b)),
		Annotations: map[string]string{ocispec.AnnotationRefName: "mixed"}})
	b, _ = json.Marshal(top)
	if err := os.WriteFile(filepath.Join(src, "index.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}

	all, err := convert.New(convert.Options{WorkDir: filepath.Join(tmp, "work"), VirtualSize: 128 << 20})
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(tmp, "dst")
	res, err = all.Convert(ctx, "oci:"+src+":mixed", "oci:"+dst+":obd")
	if err != nil {
		t.Fatal(err)
	}
	if res.Layers != 1 {
		t.Errorf("converted %d layers, want 1 (arm64 only)", res.Layers)
	}
	var out ocispec.Index
	readJSON(t, blobPath(dst, res.Descriptor.Digest.Encoded()), &out)
	if len(out.Manifests) != 2 || out.Manifests[0].Digest != convertedIdx.Manifests[0].Digest {
		t.Fatalf("result index %+v: want the converted amd64 manifest kept and arm64 added", out.Manifests)
	}
	for _, m := range out.Manifests {
		var man ocispec.Manifest
		readJSON(t, blobPath(dst, m.Digest.Encoded()), &man)
		got, err := os.ReadFile(filepath.Join(mountConverted(t, dst, man), "etc/arch"))
		if err != nil || string(got) != m.Platform.Architecture+"\n" {
			t.Errorf("%s: etc/arch %q, %v", m.Platform.Architecture, got, err)
		}
	}
}
