package bdd_test

import (
	"bytes"
	"os"
	"testing"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bdd"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/remotefetch"
	"github.com/obdproject/obd/zfile"
	"github.com/opencontainers/go-digest"
)

// pushLayers pushes layer files to a test registry and returns them as API layers.
func pushLayers(t *testing.T, reg *testregistry.Registry, repo string, paths []string) []*bddv1.Layer {
	t.Helper()
	var layers []*bddv1.Layer
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		d := reg.PushBlob(t, repo, data)
		layers = append(layers, &bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: &bddv1.RemoteBlob{
			Ref: reg.Host + "/" + repo, Digest: d.String(), Size: int64(len(data)),
		}}})
	}
	return layers
}

func TestFUSERegistryLayersExt4(t *testing.T) {
	requireBlockFacilities(t)
	tree, img := ext4Image(t, 5, 120, 64<<20)
	files := splitImage(t, img, 3, &zfile.Options{Algorithm: zfile.LZ4}, true)
	reg := testregistry.Start(t, testregistry.Options{})
	layers := pushLayers(t, reg, "obd/app", files)

	d := startDaemon(t, "")
	if _, err := d.client.StartTrace(d.ctx(), &bddv1.StartTraceRequest{}); err != nil {
		t.Fatal(err)
	}
	dev := d.attach(&bddv1.AttachRequest{Layers: layers, ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE})
	mnt := mount(t, dev.GetDevicePath(), true)
	compareSums(t, treeSums(t, tree), treeSums(t, mnt))

	stats, err := d.client.Stats(d.ctx(), &bddv1.StatsRequest{Id: dev.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range stats.GetLayers() {
		if l.GetMisses() == 0 || l.GetBytesFetched() == 0 || l.GetErrors() != 0 {
			t.Errorf("layer %d stats %+v: want misses and fetched bytes, no errors", i, l)
		}
		if want := bdd.LayerName(layers[i]); l.GetName() != want {
			t.Errorf("layer %d named %q, want %q", i, l.GetName(), want)
		}
	}
	traceResp, err := d.client.StopTrace(d.ctx(), &bddv1.StopTraceRequest{})
	if err != nil {
		t.Fatal(err)
	}
	trace, err := remotefetch.ReadTrace(bytes.NewReader(traceResp.GetTrace()))
	if err != nil {
		t.Fatal(err)
	}
	if len(trace.Blobs) != len(layers) {
		t.Fatalf("trace covers %d blobs, want %d", len(trace.Blobs), len(layers))
	}
	if _, err := d.client.Prefetch(d.ctx(), &bddv1.PrefetchRequest{Trace: traceResp.GetTrace()}); err != nil {
		t.Fatalf("prefetch: %v", err)
	}

	// A blob the registry does not have fails the attach and leaves nothing behind.
	missing := &bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: &bddv1.RemoteBlob{
		Ref: reg.Host + "/obd/app", Digest: digest.FromString("absent").String(), Size: 4096,
	}}}
	if _, err := d.client.Attach(d.ctx(), &bddv1.AttachRequest{Layers: []*bddv1.Layer{missing}}); err == nil {
		t.Fatal("attach of a missing blob succeeded")
	}
	if list, _ := d.client.List(d.ctx(), &bddv1.ListRequest{}); len(list.GetDevices()) != 1 {
		t.Fatalf("devices after a failed attach: %+v", list.GetDevices())
	}
}
