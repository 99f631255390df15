package bdd_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/rangetable"
)

// tabled is a layer blob with its range table appended, as obd convert writes one.
type tabled struct {
	blob   []byte
	table  digest.Digest
	offset int64
}

func appendTable(t testing.TB, payload []byte) tabled {
	t.Helper()
	b, err := rangetable.NewBuilder(rangetable.DefaultChunk)
	if err != nil {
		t.Fatal(err)
	}
	b.Write(payload)
	tbl := b.Table()
	return tabled{blob: append(bytes.Clone(payload), tbl...), table: digest.FromBytes(tbl), offset: int64(len(payload))}
}

// tamper changes 256 KiB in the middle third of a layer: file data of an uncompressed LSMT
// layer, so the change reads back as other file contents, not as an error.
func tamper(layer []byte) []byte {
	out := bytes.Clone(layer)
	from := len(out) / 3
	for i := from; i < min(from+256<<10, len(out)-64<<10); i++ {
		out[i] ^= 0xa5
	}
	return out
}

func blobLayer(ref string, d digest.Digest, size int64, table tabled, pin bool) *bddv1.Layer {
	b := &bddv1.RemoteBlob{Ref: ref, Digest: d.String(), Size: size}
	if pin {
		b.RangeTable, b.RangeTableOffset = table.table.String(), table.offset
	}
	return &bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: b}}
}

// deviceSum hashes a whole block device (or file), or returns the read error.
func deviceSum(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

func fileSum(t *testing.T, path string) []byte {
	t.Helper()
	sum, err := deviceSum(path)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// TestFUSEHostileRegistrySameLayerDigest serves an image's layers from an honest registry
// and, under the same digests, other bytes from a hostile one, with real bdd, FUSE and loop
// devices. The hostile image is read first, so whatever of its bytes bdd accepts is in the
// cache; the honest image's device must still read exactly its own image, and again after a
// bdd restart over the same cache.
func TestFUSEHostileRegistrySameLayerDigest(t *testing.T) {
	requireBlockFacilities(t)
	tree, img := ext4Image(t, 19, 80, 64<<20)
	files := splitImage(t, img, 2, nil, true) // uncompressed: tampered bytes read as other data
	want := fileSum(t, img)
	reg := testregistry.Start(t, testregistry.Options{})
	bad := testregistry.StartHostile(t)
	var honest, hostile []tabled
	var digests []digest.Digest
	for _, p := range files {
		payload, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		h := appendTable(t, payload)
		d := reg.PushBlob(t, "obd/app", h.blob)
		e := appendTable(t, tamper(payload))
		bad.Serve("evil/app", d, e.blob)
		honest, hostile, digests = append(honest, h), append(hostile, e), append(digests, d)
	}
	for _, c := range []struct {
		name               string
		pinEvil, pinHonest bool
	}{
		{"tables", true, true},
		{"hostile without table", false, true},
		{"no tables", false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var evilLayers, goodLayers []*bddv1.Layer
			for i, d := range digests {
				size := int64(len(honest[i].blob))
				evilLayers = append(evilLayers, blobLayer(bad.Host+"/evil/app", d, size, hostile[i], c.pinEvil))
				goodLayers = append(goodLayers, blobLayer(reg.Host+"/obd/app", d, size, honest[i], c.pinHonest))
			}
			d := startDaemon(t, "")
			evilDev := d.attach(&bddv1.AttachRequest{Layers: evilLayers, ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE})
			if sum, err := deviceSum(evilDev.GetDevicePath()); err == nil && bytes.Equal(sum, want) {
				t.Fatal("the hostile device reads the honest image: the test proves nothing")
			}
			goodDev := d.attach(&bddv1.AttachRequest{Layers: goodLayers, ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE})
			if sum, err := deviceSum(goodDev.GetDevicePath()); err != nil || !bytes.Equal(sum, want) {
				t.Fatalf("the honest device does not read its image (read error %v)\n%s", err, d.Logs())
			}
			mnt := mount(t, goodDev.GetDevicePath(), true)
			compareSums(t, treeSums(t, tree), treeSums(t, mnt))

			d.Kill9(t)
			d.Start(t)
			run(t, "sh", "-c", "echo 3 > /proc/sys/vm/drop_caches")
			_, _ = deviceSum(evilDev.GetDevicePath())
			if sum, err := deviceSum(goodDev.GetDevicePath()); err != nil || !bytes.Equal(sum, want) {
				t.Fatalf("after a restart the honest device does not read its image (read error %v)\n%s", err, d.Logs())
			}
			compareSums(t, treeSums(t, tree), treeSums(t, mnt))
		})
	}
}

// TestFUSECorruptRangeFailsClearly serves a layer whose bytes fail their range table in one
// place: reading there through the device fails (EIO), bdd logs an error naming the blob, the
// bytes and the registry, and the rest of the device reads fine.
func TestFUSECorruptRangeFailsClearly(t *testing.T) {
	requireBlockFacilities(t)
	_, img := ext4Image(t, 23, 40, 32<<20)
	files := splitImage(t, img, 1, nil, true)
	payload, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	good := appendTable(t, payload)
	d := digest.FromBytes(good.blob)
	bad := testregistry.StartHostile(t)
	served := append(tamper(payload), good.blob[len(payload):]...) // tampered bytes, honest table
	bad.Serve("team/app", d, served)
	dm := startDaemon(t, "")
	dev := dm.attach(&bddv1.AttachRequest{Layers: []*bddv1.Layer{blobLayer(bad.Host+"/team/app", d, int64(len(good.blob)), good, true)},
		ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE})
	_, err = deviceSum(dev.GetDevicePath())
	if err == nil {
		t.Fatal("reading a device whose layer fails its range table succeeded")
	}
	if !errors.Is(err, syscall.EIO) {
		t.Errorf("read error %v, want EIO", err)
	}
	if !dm.LogContains(d.String(), "bytes", bad.Host, "does not match") {
		t.Errorf("no log line names the blob, bytes and registry of the failed check:\n%s", dm.Logs())
	}
}

// TestRequireVerifiedRefusesLayersWithoutTable: under require_verified an Attach of a registry
// layer without a range table fails, naming why, and the same layer with its table attaches.
func TestRequireVerifiedRefusesLayersWithoutTable(t *testing.T) {
	files := splitImage(t, randomImage(t, 8<<20), 1, nil, true)
	payload, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	good := appendTable(t, payload)
	reg := testregistry.Start(t, testregistry.Options{})
	d := reg.PushBlob(t, "obd/app", good.blob)
	cfg := testConfig(t)
	cfg.Registry.RequireVerified = true
	p := startInProcess(t, cfg)
	ref, size := reg.Host+"/obd/app", int64(len(good.blob))
	_, err = p.client.Attach(callCtx(t), &bddv1.AttachRequest{Layers: []*bddv1.Layer{blobLayer(ref, d, size, good, false)}, ReadOnly: true})
	if grpcCode(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "range table") {
		t.Fatalf("attach without a table: %v, want a refusal naming the range table", err)
	}
	if _, err := p.client.Attach(callCtx(t), &bddv1.AttachRequest{Layers: []*bddv1.Layer{blobLayer(ref, d, size, good, true)}, ReadOnly: true}); err != nil {
		t.Fatalf("attach with its table: %v", err)
	}
}
