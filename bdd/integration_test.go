package bdd_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/internal/facility"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/zfile"
)

// ext4Image builds an ext4 image of a generated tree and returns both.
func ext4Image(t *testing.T, seed uint64, files int, size int64) (tree, img string) {
	tree = makeTree(t, seed, files)
	return tree, mkfsExt4(t, tree, size)
}

func TestFUSELocalLayersExt4(t *testing.T) {
	requireBlockFacilities(t)
	tree, img := ext4Image(t, 1, 150, 96<<20)
	for _, tc := range []struct {
		name  string
		zopts *zfile.Options
		tar   bool
	}{
		{"lsmt", nil, false},
		{"lz4", &zfile.Options{Algorithm: zfile.LZ4}, false},
		{"tar+zstd", &zfile.Options{Algorithm: zfile.ZSTD, BlockSize: 65536}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			layers := splitImage(t, img, 3, tc.zopts, tc.tar)
			d := startDaemon(t, "")
			dev := d.attach(&bddv1.AttachRequest{Layers: pathLayers(layers...), ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE})
			if !strings.HasPrefix(dev.GetDevicePath(), "/dev/loop") {
				t.Fatalf("device path %q", dev.GetDevicePath())
			}
			// Every device also has an NBD export, giving the same bytes as the block device.
			raw, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			if dev.GetNbdSocket() == "" || !bytes.Equal(nbdRead(t, dev.GetNbdSocket()), raw) {
				t.Fatalf("the NBD export %q of a FUSE device does not serve the image", dev.GetNbdSocket())
			}
			mnt := mount(t, dev.GetDevicePath(), true)
			compareSums(t, treeSums(t, tree), treeSums(t, mnt))
		})
	}
}

func TestFUSEDetachMountedIsRefused(t *testing.T) {
	requireBlockFacilities(t)
	_, img := ext4Image(t, 2, 10, 32<<20)
	layers := splitImage(t, img, 1, nil, false)
	d := startDaemon(t, "")
	dev := d.attach(&bddv1.AttachRequest{Layers: pathLayers(layers...), ReadOnly: true})
	mnt := mount(t, dev.GetDevicePath(), true)
	_, err := d.Client.Detach(d.ctx(), &bddv1.DetachRequest{Id: dev.GetId()})
	if grpcCode(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("detach of a mounted device: %v, want FailedPrecondition saying busy", err)
	}
	// The device still works.
	if _, err := os.ReadDir(filepath.Join(mnt, "d1")); err != nil {
		t.Fatalf("mount broken by the refused detach: %v", err)
	}
	run(t, "umount", mnt)
	if _, err := d.Client.Detach(d.ctx(), &bddv1.DetachRequest{Id: dev.GetId()}); err != nil {
		t.Fatalf("detach after umount: %v", err)
	}
}

// TestFUSECrashRecovery kills bdd with SIGKILL under a mounted read-write ext4 and
// checks that the restarted daemon takes the device over: the mount keeps working
// without a remount, reads issued during the gap complete, and writes made before
// and after the crash are all there.
func TestFUSECrashRecovery(t *testing.T) {
	requireBlockFacilities(t)
	tree, img := ext4Image(t, 3, 60, 64<<20)
	t.Run("local", func(t *testing.T) {
		files := splitImage(t, img, 2, &zfile.Options{Algorithm: zfile.LZ4}, false)
		crashRecovery(t, tree, pathLayers(files...), (*testenv.BDD).Kill9)
	})
	t.Run("registry", func(t *testing.T) {
		files := splitImage(t, img, 2, &zfile.Options{Algorithm: zfile.LZ4}, true)
		reg := testregistry.Start(t, testregistry.Options{})
		crashRecovery(t, tree, pushLayers(t, reg, "obd/crash", files), (*testenv.BDD).Kill9)
	})
	// A clean stop (SIGTERM) must leave devices to the keeper just the same.
	t.Run("sigterm", func(t *testing.T) {
		files := splitImage(t, img, 2, &zfile.Options{Algorithm: zfile.LZ4}, false)
		crashRecovery(t, tree, pathLayers(files...), (*testenv.BDD).Terminate)
	})
}

func crashRecovery(t *testing.T, tree string, layers []*bddv1.Layer, stop func(*testenv.BDD, testing.TB)) {
	d := startDaemon(t, "")
	upper := filepath.Join(t.TempDir(), "upper")
	dev := d.attach(&bddv1.AttachRequest{Layers: layers, UpperDir: upper, Transport: bddv1.Transport_TRANSPORT_FUSE})
	mnt := mount(t, dev.GetDevicePath(), false)
	want := treeSums(t, tree)
	compareSums(t, want, treeSums(t, mnt))

	before := writeFiles(t, mnt, "before", 20)
	syncFS(t, mnt)
	// Written but not flushed when bdd stops: ext4 holds them dirty, and they reach the
	// device (so the restarted bdd) only after it.
	unflushed := writeFiles(t, mnt, "unflushed", 10)
	stop(d.BDD, t)

	// A reader arriving while no daemon runs must wait, not fail.
	gapRead := make(chan error, 1)
	go func() {
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
			gapRead <- err
			return
		}
		_, err := os.ReadFile(filepath.Join(mnt, "d2/e2/f0002"))
		gapRead <- err
	}()
	time.Sleep(500 * time.Millisecond)
	d.Start(t)
	select {
	case err := <-gapRead:
		if err != nil {
			t.Fatalf("read during the restart failed: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("read issued during the restart never completed")
	}
	list, err := d.Client.List(d.ctx(), &bddv1.ListRequest{})
	if err != nil || len(list.GetDevices()) != 1 || list.GetDevices()[0].GetDevicePath() != dev.GetDevicePath() {
		t.Fatalf("after restart: %v %+v", err, list.GetDevices())
	}
	after := writeFiles(t, mnt, "after", 20)
	syncFS(t, mnt)
	run(t, "sh", "-c", "echo 3 > /proc/sys/vm/drop_caches")
	got := treeSums(t, mnt)
	for p, s := range before {
		want[p] = s
	}
	for p, s := range unflushed {
		want[p] = s
	}
	for p, s := range after {
		want[p] = s
	}
	compareSums(t, want, got)
	if !d.LogContains("restored", dev.GetId()) {
		t.Errorf("the log does not say the device was restored")
	}
	if !d.LogContains("api call", "/obd.bdd.v1.Daemon/Attach", "code=OK") {
		t.Errorf("API calls are not logged at debug level")
	}
}

// writeFiles writes n files of pseudo-random content under mnt/dir and returns
// their checksums keyed like treeSums.
func writeFiles(t *testing.T, mnt, dir string, n int) map[string]string {
	t.Helper()
	src := makeTree(t, uint64(len(dir)*1000+n), n)
	run(t, "cp", "-a", src, filepath.Join(mnt, dir))
	sums := map[string]string{}
	for p, s := range treeSums(t, src) {
		sums[filepath.Join(dir, p)] = s
	}
	return sums
}

func syncFS(t *testing.T, mnt string) {
	run(t, "sync", "-f", mnt)
}

// TestFUSECorruptLayer flips bytes inside a compressed block of a layer: the reader
// gets EIO, never wrong data, and bdd's log names the layer and the block.
func TestFUSECorruptLayer(t *testing.T) {
	requireBlockFacilities(t)
	_, img := ext4Image(t, 4, 40, 32<<20)
	layers := splitImage(t, img, 1, &zfile.Options{Algorithm: zfile.LZ4}, false)
	// Corrupt the middle of the layer (well inside the data blocks).
	f, err := os.OpenFile(layers[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	if _, err := f.WriteAt([]byte("CORRUPTED!CORRUPTED!"), st.Size()/2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	d := startDaemon(t, "")
	dev := d.attach(&bddv1.AttachRequest{Layers: pathLayers(layers...), ReadOnly: true})
	// Read the raw device: every byte either matches the image or the read fails.
	want, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.Open(dev.GetDevicePath())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	buf := make([]byte, 64<<10)
	failed := 0
	for off := int64(0); off < int64(len(want)); off += int64(len(buf)) {
		n, err := raw.ReadAt(buf, off)
		if err != nil {
			if !strings.Contains(err.Error(), "input/output error") {
				t.Fatalf("read at %d: %v, want EIO", off, err)
			}
			failed++
			continue
		}
		if string(buf[:n]) != string(want[off:off+int64(n)]) {
			t.Fatalf("read at %d returned wrong data instead of an error", off)
		}
	}
	if failed == 0 {
		t.Fatal("no read failed although a block is corrupt")
	}
	if !d.LogContains("ERROR", layers[0], "block") {
		t.Errorf("no log line names the layer %s and the block:\n%s", layers[0], d.Logs())
	}
}

// TestFUSEManyDevices serves one image as several devices at once, each mounted
// and checked concurrently.
func TestFUSEManyDevices(t *testing.T) {
	requireBlockFacilities(t)
	tree, img := ext4Image(t, 6, 40, 32<<20)
	layers := splitImage(t, img, 3, &zfile.Options{Algorithm: zfile.LZ4}, false)
	want := treeSums(t, tree)
	d := startDaemon(t, "")
	const devices = 8
	mounts := make([]string, devices)
	for i := range mounts {
		dev := d.attach(&bddv1.AttachRequest{Layers: pathLayers(layers...), ReadOnly: true})
		mounts[i] = mount(t, dev.GetDevicePath(), true)
	}
	list, err := d.Client.List(d.ctx(), &bddv1.ListRequest{})
	if err != nil || len(list.GetDevices()) != devices {
		t.Fatalf("List: %v, %d devices", err, len(list.GetDevices()))
	}
	type result struct {
		sums map[string]string
		err  error
	}
	done := make(chan result, devices)
	for _, m := range mounts {
		go func() {
			sums, err := sumTree(m)
			done <- result{sums, err}
		}()
	}
	for range mounts {
		r := <-done
		if r.err != nil {
			t.Fatal(r.err)
		}
		compareSums(t, want, r.sums)
	}
}

// TestFUSEFioVerify runs fio's write-then-verify over read-write devices: one with
// only an upper layer, one with an upper over lower layers.
func TestFUSEFioVerify(t *testing.T) {
	requireBlockFacilities(t)
	if _, err := exec.LookPath("fio"); err != nil {
		facility.Missing(t, "fio is not installed (apt-get install fio)")
	}
	img := filepath.Join(t.TempDir(), "img")
	run(t, "sh", "-c", "head -c 64M /dev/urandom > "+img)
	lower := splitImage(t, img, 2, &zfile.Options{Algorithm: zfile.LZ4}, false)
	d := startDaemon(t, "")
	for name, req := range map[string]*bddv1.AttachRequest{
		"upper only":  {UpperDir: filepath.Join(t.TempDir(), "upper"), UpperSize: 64 << 20},
		"upper+lower": {Layers: pathLayers(lower...), UpperDir: filepath.Join(t.TempDir(), "upper")},
	} {
		t.Run(name, func(t *testing.T) {
			dev := d.attach(req)
			out, err := exec.Command("fio", "--name=verify", "--filename="+dev.GetDevicePath(), "--rw=randwrite",
				"--bsrange=4k-256k", "--direct=1", "--ioengine=libaio", "--iodepth=16", "--size=48M",
				"--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--randrepeat=0", "--verify_state_save=0").CombinedOutput()
			if err != nil {
				t.Fatalf("fio verify failed: %v\n%s", err, out)
			}
			if _, err := d.Client.Detach(d.ctx(), &bddv1.DetachRequest{Id: dev.GetId()}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestFUSEOrphanDropped plays a crash between exposing a device and saving its
// state: the restarted daemon must release the FUSE connection the keeper holds for
// it instead of leaving it unserved.
func TestFUSEOrphanDropped(t *testing.T) {
	requireBlockFacilities(t)
	_, img := ext4Image(t, 7, 5, 16<<20)
	layers := splitImage(t, img, 1, nil, false)
	d := startDaemon(t, "")
	dev := d.attach(&bddv1.AttachRequest{Layers: pathLayers(layers...), ReadOnly: true})
	d.Kill9(t)
	if err := os.Remove(filepath.Join(d.Dir, "state", "devices", dev.GetId()+".json")); err != nil {
		t.Fatal(err)
	}
	d.Start(t)
	if !d.LogContains("dropping the FUSE connection", dev.GetId()) {
		t.Fatalf("orphaned device %s was not dropped:\n%s", dev.GetId(), d.Logs())
	}
	fuseFile := filepath.Join(d.Dir, "run", "fuse", dev.GetId())
	if out, _ := exec.Command("findmnt", "-n", fuseFile).Output(); len(out) != 0 {
		t.Fatalf("the orphan's FUSE file is still mounted: %s", out)
	}
	// Its loop device is left to the administrator; free it so the test leaves none.
	run(t, "losetup", "-d", dev.GetDevicePath())
}

// unrestoredDevice attaches a one-layer read-only device (with its ext4 mounted when mnt is
// wanted), kills bdd, moves the layer file away and restarts bdd, whose restore of the
// device must fail. It returns the daemon, the device, the layer's path (the file is at
// path+".away"), the tree the ext4 holds and its mount point ("" unless wanted).
func unrestoredDevice(t *testing.T, seed uint64, wantMount bool) (d *daemon, dev *bddv1.Device, layer, tree, mnt string) {
	t.Helper()
	requireBlockFacilities(t)
	tree, img := ext4Image(t, seed, 5, 16<<20)
	layer = splitImage(t, img, 1, nil, false)[0]
	d = startDaemon(t, "")
	dev = d.attach(&bddv1.AttachRequest{Layers: pathLayers(layer), ReadOnly: true})
	if wantMount {
		mnt = mount(t, dev.GetDevicePath(), true)
	}
	d.Kill9(t)
	if err := os.Rename(layer, layer+".away"); err != nil {
		t.Fatal(err)
	}
	d.Start(t)
	if !d.LogContains("restore failed", dev.GetId()) {
		t.Fatalf("device %s was restored without its layer:\n%s", dev.GetId(), d.Logs())
	}
	return d, dev, layer, tree, mnt
}

// TestFUSEUnrestoredDetachReleases: a device whose restore fails (its layer file is gone)
// still has a FUSE connection in the keeper, on which the ext4 above it waits; Detach of
// such a device drops that connection and unmounts its FUSE file, so nothing is left
// waiting for ever.
func TestFUSEUnrestoredDetachReleases(t *testing.T) {
	d, dev, _, _, _ := unrestoredDevice(t, 9, false)
	if _, err := d.Client.Detach(d.ctx(), &bddv1.DetachRequest{Id: dev.GetId()}); err != nil {
		t.Fatalf("detach of the unrestored device: %v", err)
	}
	fuseFile := filepath.Join(d.Dir, "run", "fuse", dev.GetId())
	if out, _ := exec.Command("findmnt", "-n", fuseFile).Output(); len(out) != 0 {
		t.Errorf("the unrestored device's FUSE file is still mounted after Detach: %s", out)
	}
	// Its loop device is left to the administrator; free it so the test leaves none.
	run(t, "losetup", "-d", dev.GetDevicePath())
}

// TestFUSEUnrestoredRetries: a device whose restore failed (its layer file was away) is
// restored in the background once the layer is back, and its ext4, mounted before bdd was
// killed, reads its files again.
func TestFUSEUnrestoredRetries(t *testing.T) {
	d, dev, layer, tree, mnt := unrestoredDevice(t, 11, true)
	if err := os.Rename(layer+".away", layer); err != nil {
		t.Fatal(err)
	}
	guard := time.Now().Add(5 * time.Minute) // against a hang, far past the first retries
	for !d.LogContains("restored", "device="+dev.GetId()) {
		if d.LogContains("restore abandoned", dev.GetId()) || time.Now().After(guard) {
			t.Fatalf("device %s was not restored once its layer was back:\n%s", dev.GetId(), d.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	compareSums(t, treeSums(t, tree), treeSums(t, mnt))
}
