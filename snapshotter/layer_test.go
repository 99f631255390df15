package snapshotter

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/lsmt"
)

func TestRemoteLayerFromLabels(t *testing.T) {
	good := "sha256:" + strings.Repeat("d", 64)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		lazy   bool
		ok     bool
		ref    string
	}{
		{"plain layer", map[string]string{"containerd.io/snapshot.ref": "x"}, false, true, ""},
		{"image-ref", map[string]string{imagelabels.BlobDigest: good, imagelabels.BlobSize: "7", imagelabels.ImageRef: "a/b:1"}, true, true, "a/b:1"},
		{"cri image-ref", map[string]string{imagelabels.BlobDigest: good, imagelabels.BlobSize: "7", imagelabels.CRIImageRef: "c/d:2"}, true, true, "c/d:2"},
		{"image-ref wins", map[string]string{imagelabels.BlobDigest: good, imagelabels.BlobSize: "7", imagelabels.ImageRef: "a", imagelabels.CRIImageRef: "c"}, true, true, "a"},
		{"bad digest", map[string]string{imagelabels.BlobDigest: "sha256:xyz", imagelabels.BlobSize: "7", imagelabels.ImageRef: "a"}, true, false, ""},
		{"missing size", map[string]string{imagelabels.BlobDigest: good, imagelabels.ImageRef: "a"}, true, false, ""},
		{"zero size", map[string]string{imagelabels.BlobDigest: good, imagelabels.BlobSize: "0", imagelabels.ImageRef: "a"}, true, false, ""},
		{"negative size", map[string]string{imagelabels.BlobDigest: good, imagelabels.BlobSize: "-5", imagelabels.ImageRef: "a"}, true, false, ""},
		{"huge size", map[string]string{imagelabels.BlobDigest: good, imagelabels.BlobSize: "9223372036854775807", imagelabels.ImageRef: "a"}, true, false, ""},
		{"past the cap", map[string]string{imagelabels.BlobDigest: good, imagelabels.BlobSize: "1099511627777", imagelabels.ImageRef: "a"}, true, false, ""},
		{"missing ref", map[string]string{imagelabels.BlobDigest: good, imagelabels.BlobSize: "7"}, true, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			layer, lazy, err := remoteLayerFromLabels(tc.labels)
			if lazy != tc.lazy || (err == nil) != tc.ok {
				t.Fatalf("lazy=%v err=%v, want lazy=%v ok=%v", lazy, err, tc.lazy, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrBadLayerLabels) {
				t.Fatalf("err = %v, want ErrBadLayerLabels", err)
			}
			if tc.lazy && tc.ok && (layer.Ref != tc.ref || layer.Digest.String() != good || layer.Size != 7) {
				t.Fatalf("layer = %+v", layer)
			}
		})
	}
}

func TestLayerRecordRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), layerRecordName)
	if _, ok, err := readLayerRecord(path); ok || err != nil {
		t.Fatalf("missing record: ok=%v err=%v", ok, err)
	}
	want := RemoteLayer{Ref: "r/app:1", Digest: digest.Digest("sha256:" + digestHex('e')), Size: 42}
	if err := writeLayerRecord(path, want); err != nil {
		t.Fatal(err)
	}
	got, ok, err := readLayerRecord(path)
	if err != nil || !ok || got != want {
		t.Fatalf("read back %+v ok=%v err=%v, want %+v", got, ok, err, want)
	}
}

func digestHex(c byte) string { return strings.Repeat(string(c), 64) }

// FuzzRemoteLayerFromLabels feeds untrusted label values (they come from image manifests).
func FuzzRemoteLayerFromLabels(f *testing.F) {
	f.Add("sha256:"+digestHex('a'), "1024", "registry.test/app:v1", "")
	f.Add("sha256:"+digestHex('a'), "-1", "", "ref")
	f.Add("md5:abc", "99999999999999999999", "", "")
	f.Fuzz(func(t *testing.T, dgst, size, ref, criRef string) {
		labels := map[string]string{imagelabels.BlobDigest: dgst, imagelabels.BlobSize: size}
		if ref != "" {
			labels[imagelabels.ImageRef] = ref
		}
		if criRef != "" {
			labels[imagelabels.CRIImageRef] = criRef
		}
		layer, lazy, err := remoteLayerFromLabels(labels)
		if !lazy {
			t.Fatal("labels with a blob digest must be lazy")
		}
		if err != nil {
			if !errors.Is(err, ErrBadLayerLabels) {
				t.Fatalf("error %v does not wrap ErrBadLayerLabels", err)
			}
			return
		}
		if layer.Digest.Validate() != nil || layer.Size <= 0 || layer.Ref == "" {
			t.Fatalf("accepted an unusable layer %+v", layer)
		}
	})
}

func TestRemoteLayerRangeTableLabels(t *testing.T) {
	blob := "sha256:" + strings.Repeat("d", 64)
	table := "sha256:" + strings.Repeat("e", 64)
	base := func(extra map[string]string) map[string]string {
		l := map[string]string{imagelabels.BlobDigest: blob, imagelabels.BlobSize: "100000", imagelabels.ImageRef: "a/b:1"}
		for k, v := range extra {
			l[k] = v
		}
		return l
	}
	layer, _, err := remoteLayerFromLabels(base(map[string]string{imagelabels.RangeTable: table, imagelabels.RangeTableOffset: "99000"}))
	if err != nil || layer.RangeTable.String() != table || layer.RangeTableOffset != 99000 {
		t.Fatalf("layer %+v, err %v", layer, err)
	}
	for name, extra := range map[string]map[string]string{
		"table without offset": {imagelabels.RangeTable: table},
		"offset without table": {imagelabels.RangeTableOffset: "99000"},
		"bad digest":           {imagelabels.RangeTable: "sha256:zz", imagelabels.RangeTableOffset: "99000"},
		"offset past the blob": {imagelabels.RangeTable: table, imagelabels.RangeTableOffset: "100000"},
		"offset zero":          {imagelabels.RangeTable: table, imagelabels.RangeTableOffset: "0"},
		"offset not a number":  {imagelabels.RangeTable: table, imagelabels.RangeTableOffset: "1e4"},
	} {
		if _, _, err := remoteLayerFromLabels(base(extra)); !errors.Is(err, ErrBadLayerLabels) {
			t.Errorf("%s: err %v, want ErrBadLayerLabels", name, err)
		}
	}
}

func TestRemoteLayerIPFSLabel(t *testing.T) {
	labels := map[string]string{imagelabels.BlobDigest: "sha256:" + strings.Repeat("d", 64), imagelabels.BlobSize: "100000",
		imagelabels.ImageRef: "a/b:1", imagelabels.IPFSURL: "ipfs://bafybeiey4h6pdr6wjkphvtrighj6gnxwsl63kaqy5xzx5hpaox3ujxxm4i"}
	layer, _, err := remoteLayerFromLabels(labels)
	if err != nil || layer.IPFSURL != labels[imagelabels.IPFSURL] {
		t.Fatalf("layer %+v, err %v", layer, err)
	}
	labels[imagelabels.IPFSURL] = "https://example.com/blob"
	if _, _, err := remoteLayerFromLabels(labels); !errors.Is(err, ErrBadLayerLabels) {
		t.Fatalf("a non-IPFS URL label: err %v, want ErrBadLayerLabels", err)
	}
}

// A replayed trace names its blobs as the device will: the image's repository and range
// table win over whatever the trace says.
func TestPinTrace(t *testing.T) {
	blob, other := digest.FromString("blob"), digest.FromString("other")
	table := digest.FromString("table")
	raw, err := blocktrace.Trace{Blobs: []blocktrace.Blob{
		{Ref: "elsewhere.example/x/y", Digest: blob, Size: 100, Ranges: []blocktrace.Range{{Off: 0, Len: 1}},
			RangeTable: digest.FromString("bogus"), RangeTableOffset: 50},
		{Ref: "r.example/o", Digest: other, Size: 10, Ranges: []blocktrace.Range{{Off: 0, Len: 1}}},
	}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	layers := []RemoteLayer{{Ref: "reg.example/team/app:v1", Digest: blob, Size: 100, RangeTable: table, RangeTableOffset: 90}}
	got, err := blocktrace.Decode(pinTrace(raw, layers))
	if err != nil {
		t.Fatal(err)
	}
	b := got.Blobs[0]
	if b.Ref != "reg.example/team/app" || b.RangeTable != table || b.RangeTableOffset != 90 {
		t.Fatalf("pinned blob %+v", b)
	}
	if got.Blobs[1].Ref != "r.example/o" || got.Blobs[1].RangeTable != "" {
		t.Fatalf("a blob of no layer changed: %+v", got.Blobs[1])
	}
	if string(pinTrace([]byte("junk"), layers)) != "junk" {
		t.Fatal("an undecodable trace was changed")
	}
}

func TestUnpackedLayer(t *testing.T) {
	work := t.TempDir()
	w, err := lsmt.Create(filepath.Join(work, "upper"), lsmt.CreateOptions{VirtualSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var commit bytes.Buffer
	if _, err := w.Commit(&commit, lsmt.CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, commitMember)
	if err := os.WriteFile(path, commit.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	layer, ok, err := unpackedLayer(dir)
	if err != nil || !ok || layer.Path != path || layer.Size != int64(commit.Len()) || layer.Digest != digest.FromBytes(commit.Bytes()) {
		t.Fatalf("unpackedLayer = %+v, %v, %v; want the commit file", layer, ok, err)
	}
	// Anything else is an ordinary layer: another file beside it, or no overlaybd layer.
	if err := os.WriteFile(filepath.Join(dir, "etc"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := unpackedLayer(dir); ok || err != nil {
		t.Fatalf("with another file: %v, %v", ok, err)
	}
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, commitMember), []byte("not a layer"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := unpackedLayer(other); ok || err != nil {
		t.Fatalf("a file that is no layer: %v, %v", ok, err)
	}
}
