package convert

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestLayoutStore pushes, tags and resolves in an OCI layout, and checks the
// errors for missing, ambiguous and corrupt content.
func TestLayoutStore(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "layout")
	s := &layoutStore{dir: dir, tagName: "a"}
	blob := []byte(`{"schemaVersion":2}`)
	d := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	if err := s.push(ctx, d, bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.resolve(ctx); err == nil {
		t.Error("resolve before any tag succeeded")
	}
	if err := s.tag(ctx, d, blob); err != nil {
		t.Fatal(err)
	}
	other := &layoutStore{dir: dir, tagName: "b"}
	if err := other.tag(ctx, d, blob); err != nil {
		t.Fatal(err)
	}
	if got, err := s.resolve(ctx); err != nil || got.Digest != d.Digest {
		t.Errorf("resolve a = %v, %v", got.Digest, err)
	}
	if _, err := (&layoutStore{dir: dir}).resolve(ctx); err == nil || !strings.Contains(err.Error(), "no tag given") {
		t.Errorf("resolve without a tag among two images: %v", err)
	}
	if _, err := (&layoutStore{dir: dir, tagName: "c"}).resolve(ctx); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("resolve of a missing tag: %v, want not found", err)
	}
	rc, err := s.fetch(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, blob) {
		t.Errorf("fetched %q", got)
	}
	// Re-tagging a moves only a.
	blob2 := []byte(`{"schemaVersion":2,"x":1}`)
	d2 := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(blob2), Size: int64(len(blob2))}
	if err := s.push(ctx, d2, bytes.NewReader(blob2)); err != nil {
		t.Fatal(err)
	}
	if err := s.tag(ctx, d2, blob2); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.resolve(ctx); got.Digest != d2.Digest {
		t.Errorf("a after re-tag = %s", got.Digest)
	}
	if got, _ := other.resolve(ctx); got.Digest != d.Digest {
		t.Errorf("b after re-tagging a = %s", got.Digest)
	}
	// Content that does not match its digest is refused and not stored.
	bad := ocispec.Descriptor{Digest: digest.FromString("other"), Size: 3}
	if err := s.push(ctx, bad, strings.NewReader("abc")); err == nil {
		t.Error("push of mismatching content succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "blobs", "sha256", bad.Digest.Encoded())); !os.IsNotExist(err) {
		t.Errorf("mismatching blob stored: %v", err)
	}
	if _, err := s.fetch(ctx, ocispec.Descriptor{Digest: "sha256:../../etc/passwd"}); err == nil {
		t.Error("fetch of an invalid digest succeeded")
	}
}

func TestChainIDs(t *testing.T) {
	a, b := digest.FromString("a"), digest.FromString("b")
	got := chainIDs([]digest.Digest{a, b})
	if got[0] != a || got[1] != digest.FromString(a.String()+" "+b.String()) {
		t.Errorf("chainIDs = %v", got)
	}
	if layerUUID(got[0]) == layerUUID(got[1]) || layerUUID(got[1]) != layerUUID(got[1]) || len(layerUUID(a)) != 36 {
		t.Errorf("layer UUIDs %q %q", layerUUID(got[0]), layerUUID(got[1]))
	}
}

func TestDecompressRefusesUnknownMediaType(t *testing.T) {
	if _, _, err := decompress("application/vnd.example.layer+lzma", strings.NewReader("")); err == nil {
		t.Error("unknown layer media type accepted")
	}
	if _, _, err := decompress(ocispec.MediaTypeImageLayerGzip, strings.NewReader("not gzip")); err == nil {
		t.Error("corrupt gzip accepted")
	}
}
