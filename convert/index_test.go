package convert_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/convert/internal/fixture"
	"github.com/obdproject/obd/gzindex"
	"github.com/obdproject/obd/layerblob"
	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/ociindex"
	"github.com/obdproject/obd/zfile"
)

// indexedLayers opens an indexed image's layers over the source layout's
// blobs, as bdd stacks them: metadata layer, then map, per source layer.
func indexedLayers(t *testing.T, src string, img convert.IndexedImage) []lsmt.Layer {
	t.Helper()
	var layers []lsmt.Layer
	for _, l := range img.Layers {
		mf, err := os.Open(l.Meta)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mf.Close() })
		fi, _ := mf.Stat()
		meta, err := layerblob.Open(mf, fi.Size(), l.Meta)
		if err != nil {
			t.Fatal(err)
		}
		xb, err := os.ReadFile(l.GzIndex)
		if err != nil {
			t.Fatal(err)
		}
		x, err := gzindex.Decode(xb)
		if err != nil {
			t.Fatal(err)
		}
		mb, err := os.ReadFile(l.Map)
		if err != nil {
			t.Fatal(err)
		}
		m, err := ociindex.DecodeMap(mb)
		if err != nil {
			t.Fatal(err)
		}
		blob, err := os.Open(blobPath(src, l.Source.Digest.Encoded()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { blob.Close() })
		mapped, err := m.Layer(gzindex.NewReader(blob, x, gzindex.ReaderOptions{}), l.Map)
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, meta, mapped)
	}
	return layers
}

// TestIndexMatchesUmoci indexes the fixture image, stacks the metadata layers
// and maps over the unchanged gzip blobs, mounts the ext4 and compares the
// whole tree with `umoci unpack` of the source.
func TestIndexMatchesUmoci(t *testing.T) {
	requireDevices(t)
	umoci := fixture.Umoci(t)
	src := fixtureLayout(t)
	c, err := convert.New(convert.Options{WorkDir: t.TempDir(), VirtualSize: 256 << 20, Algorithm: zfile.ZSTD})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Index(context.Background(), "oci:"+src+":v1", convert.IndexOptions{Spacing: gzindex.MinSpacing})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Images) != 1 || len(res.Images[0].Layers) != 3 {
		t.Fatalf("result %+v, want one image of 3 layers", res)
	}
	var mapped, meta int64
	for _, l := range res.Images[0].Layers {
		mapped += l.MappedBytes
		fi, err := os.Stat(l.Meta)
		if err != nil {
			t.Fatal(err)
		}
		meta += fi.Size()
	}
	if mapped == 0 {
		t.Fatal("no file data mapped to the tar streams")
	}
	t.Logf("blobs %d bytes, mapped %d, metadata layers %d", res.BlobBytes, mapped, meta)
	checkMatchesUmoci(t, umoci, src, mountLayers(t, indexedLayers(t, src, res.Images[0])))
	_ = filepath.Join
}
