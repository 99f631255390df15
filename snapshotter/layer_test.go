package snapshotter

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/imagelabels"
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
