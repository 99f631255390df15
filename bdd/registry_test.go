package bdd_test

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/zfile"
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

// registryImage makes an ext4 image of a random tree of n files, splits it into three lz4
// layers and pushes them to a new test registry.
func registryImage(t *testing.T, seed uint64, n int, size int64) (tree string, reg *testregistry.Registry, layers []*bddv1.Layer) {
	t.Helper()
	tree, img := ext4Image(t, seed, n, size)
	files := splitImage(t, img, 3, &zfile.Options{Algorithm: zfile.LZ4}, true)
	reg = testregistry.Start(t, testregistry.Options{})
	return tree, reg, pushLayers(t, reg, "obd/app", files)
}

func TestFUSERegistryLayersExt4(t *testing.T) {
	requireBlockFacilities(t)
	tree, reg, layers := registryImage(t, 5, 120, 64<<20)

	d := startDaemon(t, "")
	if _, err := d.Client.StartTrace(d.ctx(), &bddv1.StartTraceRequest{}); err != nil {
		t.Fatal(err)
	}
	dev := d.attach(&bddv1.AttachRequest{Layers: layers, ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE})
	mnt := mount(t, dev.GetDevicePath(), true)
	compareSums(t, treeSums(t, tree), treeSums(t, mnt))

	stats, err := d.Client.Stats(d.ctx(), &bddv1.StatsRequest{Id: dev.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range stats.GetLayers() {
		if l.GetMisses() == 0 || l.GetBytesFetched() == 0 || l.GetErrors() != 0 {
			t.Errorf("layer %d stats %+v: want misses and fetched bytes, no errors", i, l)
		}
		if want := bddclient.LayerName(layers[i]); l.GetName() != want {
			t.Errorf("layer %d named %q, want %q", i, l.GetName(), want)
		}
	}
	traceResp, err := d.Client.StopTrace(d.ctx(), &bddv1.StopTraceRequest{})
	if err != nil {
		t.Fatal(err)
	}
	trace, err := blocktrace.Decode(traceResp.GetTrace())
	if err != nil {
		t.Fatal(err)
	}
	if len(trace.Blobs) != len(layers) {
		t.Fatalf("trace covers %d blobs, want %d", len(trace.Blobs), len(layers))
	}
	if _, err := d.Client.Prefetch(d.ctx(), &bddv1.PrefetchRequest{Trace: traceResp.GetTrace()}); err != nil {
		t.Fatalf("prefetch: %v", err)
	}
	// A device attached over the blobs a replay has just covered leaves fetching ahead to it.
	again := d.attach(&bddv1.AttachRequest{Layers: layers, ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE})
	if !d.LogContains("metadata and file prefetch skipped: a trace replay covers the device", again.GetId()) {
		t.Errorf("device %s attached after a replay of its blobs did not skip its own prefetch:\n%s", again.GetId(), d.Logs())
	}
	if _, err := d.Client.Detach(d.ctx(), &bddv1.DetachRequest{Id: again.GetId()}); err != nil {
		t.Fatal(err)
	}

	// A blob the registry does not have fails the attach and leaves nothing behind.
	missing := &bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: &bddv1.RemoteBlob{
		Ref: reg.Host + "/obd/app", Digest: digest.FromString("absent").String(), Size: 4096,
	}}}
	if _, err := d.Client.Attach(d.ctx(), &bddv1.AttachRequest{Layers: []*bddv1.Layer{missing}}); err == nil {
		t.Fatal("attach of a missing blob succeeded")
	}
	if list, _ := d.Client.List(d.ctx(), &bddv1.ListRequest{}); len(list.GetDevices()) != 1 {
		t.Fatalf("devices after a failed attach: %+v", list.GetDevices())
	}
}

// TestFUSERegistryMetadataPrefetch checks that a new device over registry blobs fetches its
// ext4 metadata by itself: once bdd reports the walk done, listing and stat-ing every file
// of the mounted filesystem reads no byte that is not in the cache.
func TestFUSERegistryMetadataPrefetch(t *testing.T) {
	requireBlockFacilities(t)
	tree, _, layers := registryImage(t, 7, 300, 256<<20)

	d := startDaemon(t, "")
	dev := d.attach(&bddv1.AttachRequest{Layers: layers, ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE})
	for deadline := time.Now().Add(30 * time.Second); !d.LogContains("metadata prefetched", dev.GetId()); {
		if time.Now().After(deadline) {
			t.Fatalf("no metadata walk reported:\n%s", d.Logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// totals sums the layers' cache misses and bytes fetched.
	totals := func() (misses, fetched uint64) {
		stats, err := d.Client.Stats(d.ctx(), &bddv1.StatsRequest{Id: dev.GetId()})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range stats.GetLayers() {
			misses += l.GetMisses()
			fetched += l.GetBytesFetched()
		}
		return misses, fetched
	}
	misses := func() uint64 { n, _ := totals(); return n }
	walked := misses()
	if walked == 0 {
		t.Fatal("the metadata walk fetched nothing")
	}
	mnt := mount(t, dev.GetDevicePath(), true)
	entries := 0
	err := filepath.WalkDir(mnt, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		entries++
		_, err = e.Info()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := len(treeSums(t, tree)); entries < want {
		t.Fatalf("walked %d entries of the mounted filesystem, want at least %d", entries, want)
	}
	if after := misses(); after != walked {
		t.Errorf("listing %d entries missed the cache %d times after the metadata walk", entries, after-walked)
	}

	// A read of the largest file that misses the cache (in its middle: its first blocks
	// may share a fill unit with metadata) fetches the rest of the file in the background:
	// reading it whole then misses nothing.
	var big string
	var bigSize int64
	filepath.WalkDir(mnt, func(p string, e fs.DirEntry, err error) error {
		if info, ierr := e.Info(); err == nil && ierr == nil && info.Mode().IsRegular() && info.Size() > bigSize {
			big, bigSize = p, info.Size()
		}
		return nil
	})
	if bigSize < 1<<20 {
		t.Fatalf("largest file %s has %d bytes; the test needs one over 1 MiB", big, bigSize)
	}
	f, err := os.Open(big)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before := misses()
	if _, err := f.ReadAt(make([]byte, 4096), bigSize/2); err != nil {
		t.Fatal(err)
	}
	fetched := func() uint64 { _, n := totals(); return n }
	for last, stable := fetched(), 0; stable < 10; stable++ { // settled for 200 ms
		time.Sleep(20 * time.Millisecond)
		if now := fetched(); now != last {
			last, stable = now, 0
		}
	}
	touched := misses()
	if touched == before {
		t.Fatal("the read in the middle of the largest file did not miss the cache")
	}
	if _, err := io.Copy(io.Discard, f); err != nil {
		t.Fatal(err)
	}
	if after := misses(); after != touched {
		t.Errorf("reading %s (%d bytes) after its first 4 KiB missed the cache %d times", big, bigSize, after-touched)
	}
}
