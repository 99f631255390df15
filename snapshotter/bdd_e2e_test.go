package snapshotter

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/layerblob"
	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/traceartifact"
	"github.com/obdproject/obd/zfile"
)

// overlaybdBlob makes an overlaybd layer blob holding an ext4 of the tree at dir: mkfs.ext4 -d
// into an image, the image's non-zero blocks written into an LSMT layer, committed through
// ZFile (LZ4) and wrapped in the layer tar, as the converter's output for a one-layer image.
func overlaybdBlob(t *testing.T, dir string) []byte {
	t.Helper()
	const size = 64 << 20
	work := t.TempDir()
	image := filepath.Join(work, "ext4.img")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, testenv.Bin(t, "mkfs.ext4"), "-q", "-F", "-d", dir, image, strconv.Itoa(size>>20)+"M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	layer, err := lsmt.Create(filepath.Join(work, "layer"), lsmt.CreateOptions{VirtualSize: size})
	if err != nil {
		t.Fatal(err)
	}
	defer layer.Close()
	src, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if _, err := layer.Import(src, 0); err != nil {
		t.Fatal(err)
	}
	var blob bytes.Buffer
	opts := layerblob.WriteOptions{ZFile: &zfile.Options{Algorithm: zfile.LZ4}, Tar: true, TempDir: work}
	if err := layerblob.Write(&blob, opts, func(w io.Writer) error {
		_, err := layer.Commit(w, lsmt.CommitOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return blob.Bytes()
}

// lazyBusybox is a busybox image pushed to a test registry whose one layer names an overlaybd
// blob of the same files, pushed next to it.
type lazyBusybox struct {
	ref        string
	registry   *testregistry.Registry
	busyboxMD5 string // of /bin/busybox in the image
}

func pushLazyBusybox(t *testing.T) lazyBusybox {
	t.Helper()
	skopeo := testenv.Bin(t, "skopeo")
	plain := testenv.BuildBusyboxImage(t)
	blob := overlaybdBlob(t, plain.RootFS)
	registry := testregistry.Start(t, testregistry.Options{})
	repo := "obdtest/busybox"
	blobDigest := registry.PushBlob(t, repo, blob)
	img := testenv.BuildBusyboxImage(t, testenv.WithLayerAnnotations(map[string]string{
		imagelabels.BlobDigest: blobDigest.String(),
		imagelabels.BlobSize:   strconv.Itoa(len(blob)),
	}))
	ref := registry.Host + "/" + repo + ":obd"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
		"oci:"+img.Layout+":"+img.Tag, "docker://"+ref).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}
	return lazyBusybox{ref: ref, registry: registry, busyboxMD5: plain.BusyboxMD5(t)}
}

// bddStack is bdd, the snapshotter using it and containerd using the snapshotter.
type bddStack struct {
	bdd    *testenv.BDD
	served *servedSnapshotter
	ctrd   *testenv.Containerd
}

func startBDDStack(t *testing.T, opts ...Opt) *bddStack {
	t.Helper()
	return startBDDStackWith(t, testenv.StartBDD(t), opts...)
}

// startBDDStackWith is startBDDStack on a bdd already running.
func startBDDStackWith(t *testing.T, b *testenv.BDD, opts ...Opt) *bddStack {
	t.Helper()
	devices, err := NewBDDDevices(b.Client, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	served := startServedSnapshotter(t, append([]Opt{WithDeviceManager(devices)}, opts...)...)
	ctrd := testenv.StartContainerd(t, testenv.ContainerdOptions{
		ProxyPlugins: []testenv.ProxyPlugin{{Name: "overlaybd", Type: "snapshot", Address: served.address}},
	})
	return &bddStack{bdd: b, served: served, ctrd: ctrd}
}

func (s *bddStack) nerdctl(t *testing.T, args ...string) string {
	t.Helper()
	return s.ctrd.Nerdctl(t, append([]string{"--snapshotter", "overlaybd", "--insecure-registry"}, args...)...)
}

func (s *bddStack) devices(t *testing.T) []*bddv1.Device {
	t.Helper()
	resp, err := s.bdd.Client.List(context.Background(), &bddv1.ListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetDevices()
}

// crashAndRestart kills bdd with SIGKILL and restarts it, then restarts the snapshotter.
func (s *bddStack) crashAndRestart(t *testing.T) {
	t.Helper()
	s.bdd.Kill9(t)
	s.bdd.Start(t)
	s.served.stop()
	s.served.start()
}

// TestE2EBDDLazyImage is the whole lazy path with real parts: an overlaybd blob in a registry,
// nerdctl pulling an image whose layer names it (without fetching it), bdd attaching it as a
// FUSE-backed loop device for the snapshotter, and a container running from it; a kill -9 of
// bdd and a restart of the snapshotter leave the running container's root intact, and new
// containers start.
func TestE2EBDDLazyImage(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: runs bdd, containerd and containers")
	}
	requireOverlay(t)
	img := pushLazyBusybox(t)
	stack := startBDDStack(t)

	blobGets := img.registry.BlobGets()
	stack.nerdctl(t, "pull", "--quiet", img.ref)
	if n := img.registry.BlobGets() - blobGets; n != 1 {
		t.Fatalf("pull fetched %d blobs, want only the config", n)
	}
	if out := stack.nerdctl(t, "run", "--rm", "--net", "none", img.ref, "sh", "-c", "echo hi; cat /proc/mounts"); !strings.HasPrefix(out, "hi\n") || !strings.Contains(out, "/block/mnt") {
		t.Fatalf("container output = %q, want hi and an overlay on the device mount", out)
	}

	stack.nerdctl(t, "run", "-d", "--name", "long", "--net", "none", img.ref, "sleep", "600")
	t.Cleanup(func() { stack.ctrd.Nerdctl(t, "rm", "-f", "long") })
	if devs := stack.devices(t); len(devs) != 1 || !devs[0].GetReadOnly() {
		t.Fatalf("bdd devices = %v, want the image's one read-only device", devs)
	}

	stack.crashAndRestart(t)
	// O_DIRECT reads go past the page cache down to the device that bdd serves again.
	if out := stack.nerdctl(t, "exec", "long", "sh", "-c", "dd if=/bin/busybox bs=1M iflag=direct 2>/dev/null | md5sum"); !strings.HasPrefix(out, img.busyboxMD5) {
		t.Fatalf("running container after bdd kill -9 and snapshotter restart: md5sum = %q, want %s", out, img.busyboxMD5)
	}
	if out := stack.nerdctl(t, "run", "--rm", "--net", "none", img.ref, "echo", "again"); strings.TrimSpace(out) != "again" {
		t.Fatalf("new container after the restarts: output %q", out)
	}
	if devs := stack.devices(t); len(devs) != 1 {
		t.Fatalf("bdd devices after the restarts = %v, want the same one device", devs)
	}

	stack.nerdctl(t, "rm", "-f", "long")
	waitFor(t, "bdd to have no devices", func() bool { return len(stack.devices(t)) == 0 })
}

// TestE2EBDDDevMode runs a container in rwMode dev: its root is a writable bdd device with an
// upper layer of its own, whose writes survive a kill -9 of bdd.
func TestE2EBDDDevMode(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: runs bdd, containerd and containers")
	}
	requireOverlay(t)
	img := pushLazyBusybox(t)
	stack := startBDDStack(t, WithRWMode(RWModeDev))
	stack.nerdctl(t, "pull", "--quiet", img.ref)

	stack.nerdctl(t, "run", "-d", "--name", "long", "--net", "none", img.ref, "sh", "-c", "echo before > /data; sync; sleep 600")
	t.Cleanup(func() { stack.ctrd.Nerdctl(t, "rm", "-f", "long") })
	waitFor(t, "the container's write", func() bool {
		out, err := stack.ctrd.TryNerdctl("exec", "long", "cat", "/data")
		return err == nil && strings.TrimSpace(out) == "before"
	})
	var writable int
	for _, dev := range stack.devices(t) {
		if !dev.GetReadOnly() && dev.GetUpperDir() != "" {
			writable++
		}
	}
	if writable != 1 {
		t.Fatalf("bdd devices = %v, want one writable device with an upper layer", stack.devices(t))
	}

	stack.crashAndRestart(t)
	script := "dd if=/data bs=4096 iflag=direct 2>/dev/null; echo after > /more; sync; dd if=/more bs=4096 iflag=direct 2>/dev/null; dd if=/bin/busybox bs=1M iflag=direct 2>/dev/null | md5sum"
	out := stack.nerdctl(t, "exec", "long", "sh", "-c", script)
	if !strings.HasPrefix(out, "before\nafter\n"+img.busyboxMD5) {
		t.Fatalf("writable root after bdd kill -9 = %q, want the old write, a new one and busybox intact", out)
	}

	stack.nerdctl(t, "rm", "-f", "long")
	waitFor(t, "bdd to have no devices", func() bool { return len(stack.devices(t)) == 0 })
}

// TestE2EBDDIndexedImage runs an ordinary gzip OCI image lazily: pushed to a registry as it
// is, indexed there (obd index), pulled by nerdctl through the snapshotter, which finds the
// index through bdd and records the layers without fetching them; the container starts from
// bdd's device, which reads ranges of the original blobs: not the image's data file.
func TestE2EBDDIndexedImage(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: runs bdd, containerd and containers")
	}
	requireOverlay(t)
	data := make([]byte, 16<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	registry, ref, res := pushIndexedImage(t, "obdtest/plain:v1", data)
	b := testenv.StartBDD(t)
	stack := startIndexStack(t, b, nil, nil)

	before := registry.BlobBytes()
	stack.nerdctl(t, "pull", "--quiet", ref)
	if n := registry.BlobBytes() - before; n >= res.BlobBytes/4 {
		t.Fatalf("pull fetched %d blob bytes of the image's %d: the layers were not left lazy", n, res.BlobBytes)
	}
	stack.nerdctl(t, "run", "-d", "--name", "idx", "--net", "none", ref, "sleep", "600")
	t.Cleanup(func() { stack.ctrd.Nerdctl(t, "rm", "-f", "idx") })
	if out := stack.nerdctl(t, "exec", "idx", "sh", "-c", "echo hi; cat /proc/mounts"); !strings.HasPrefix(out, "hi\n") || !strings.Contains(out, "/block/mnt") {
		t.Fatalf("container output = %q, want hi and an overlay on the device mount", out)
	}
	devs := stack.devices(t)
	if len(devs) != 1 || len(devs[0].GetLayers()) != 2 || devs[0].GetLayers()[0].GetIndexed() == nil {
		t.Fatalf("bdd devices = %v, want one device of the image's two indexed layers", devs)
	}
	st, err := b.Client.Stats(context.Background(), &bddv1.StatsRequest{Id: devs[0].GetId()})
	if err != nil {
		t.Fatal(err)
	}
	var fetched uint64
	for _, l := range st.GetLayers() {
		fetched += l.GetBytesFetched()
	}
	t.Logf("the start fetched %d bytes of the image's %d", fetched, res.BlobBytes)
	if fetched == 0 || int64(fetched) >= res.BlobBytes/2 {
		t.Fatalf("the start fetched %d bytes of the image's %d: want a lazy part of it", fetched, res.BlobBytes)
	}
	// The data file, read whole, is the image's.
	if out := stack.nerdctl(t, "exec", "idx", "sh", "-c", "md5sum /data/blob"); !strings.Contains(out, fmt.Sprintf("%x", md5.Sum(data))) {
		t.Fatalf("md5sum /data/blob through the index = %q", out)
	}
}

// TestE2EBDDIndexedImageRegistryTrace: a start trace of an indexed OCI image, recorded on one
// node and pushed to the registry, names the image's own layer blobs; a fresh node (new bdd
// with an empty cache, new snapshotter and containerd) finds both the image's index and the
// trace, replays the trace and starts the image through the index.
func TestE2EBDDIndexedImageRegistryTrace(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: runs bdd, containerd and containers")
	}
	requireOverlay(t)
	data := make([]byte, 8<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	_, ref, res := pushIndexedImage(t, "obdtest/plaintrace:v1", data)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const workload = "head -c 1000000 /data/blob | md5sum"
	want := fmt.Sprintf("%x", md5.Sum(data[:1000000]))

	// The recording node.
	b := testenv.StartBDD(t)
	rec := startIndexStack(t, b, nil, nil)
	rec.nerdctl(t, "pull", "--quiet", ref)
	if _, err := b.Client.StartTrace(ctx, &bddv1.StartTraceRequest{}); err != nil {
		t.Fatal(err)
	}
	if out := rec.nerdctl(t, "run", "--rm", "--net", "none", ref, "sh", "-c", workload); !strings.Contains(out, want) {
		t.Fatalf("recorded start output = %q, want %s", out, want)
	}
	stopped, err := b.Client.StopTrace(ctx, &bddv1.StopTraceRequest{})
	if err != nil {
		t.Fatal(err)
	}
	trace, err := blocktrace.Decode(stopped.GetTrace())
	if err != nil {
		t.Fatal(err)
	}
	layers := map[digest.Digest]bool{}
	for _, l := range res.Images[0].Layers {
		layers[l.Source.Digest] = true
	}
	var traced int64
	for _, tb := range trace.Blobs {
		if !layers[tb.Digest] {
			t.Fatalf("the trace names blob %s, not a layer of the image", tb.Digest)
		}
		for _, r := range tb.Ranges {
			traced += r.Len
		}
	}
	if traced < 1000000/2 {
		t.Fatalf("the trace holds %d bytes for a start that read 1 MB of incompressible data", traced)
	}
	var srcLayers []ocispec.Descriptor
	for _, l := range res.Images[0].Layers {
		srcLayers = append(srcLayers, l.Source)
	}
	if _, err := traceartifact.Push(ctx, docker.NewResolver(docker.ResolverOptions{}), ref,
		traceartifact.Image{Manifest: res.Images[0].Manifest, Layers: srcLayers},
		traceartifact.Trace{Blocks: stopped.GetTrace()}, traceartifact.Info{Created: time.Now(), Recorder: t.Name()}); err != nil {
		t.Fatal(err)
	}

	// A fresh node replays the registry's trace and starts the image through its index.
	fresh := testenv.StartBDD(t)
	snLog := &testenv.LogBuffer{}
	logger := slog.New(slog.NewTextHandler(snLog, &slog.HandlerOptions{Level: slog.LevelDebug}))
	node := startIndexStack(t, fresh, NewRemoteTraces(fresh.Client, logger), logger)
	node.nerdctl(t, "pull", "--quiet", ref)
	if out := node.nerdctl(t, "run", "--rm", "--net", "none", ref, "sh", "-c", workload); !strings.Contains(out, want) {
		t.Fatalf("fresh node's start output = %q, want %s", out, want)
	}
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(snLog.String(), `msg="trace prefetched"`) || !strings.Contains(snLog.String(), "source=registry") {
		if time.Now().After(deadline) {
			t.Fatalf("no replay of the registry trace within a minute; snapshotter log:\n%s", snLog.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !fresh.LogContains("registry trace found") || !fresh.LogContains("registry index found") {
		t.Fatal("bdd did not log both the registry's index and its trace")
	}
}

// pushIndexedImage pushes a busybox image with data as /data/blob to a new registry as repo
// (name:tag) and indexes it there (obd index).
func pushIndexedImage(t *testing.T, repo string, data []byte) (*testregistry.Registry, string, convert.IndexResult) {
	t.Helper()
	skopeo := testenv.Bin(t, "skopeo")
	img := testenv.BuildBusyboxImage(t, testenv.WithDataFile("blob", data))
	registry := testregistry.Start(t, testregistry.Options{})
	ref := registry.Host + "/" + repo
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
		"oci:"+img.Layout+":"+img.Tag, "docker://"+ref).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}
	c, err := convert.New(convert.Options{WorkDir: t.TempDir(), VirtualSize: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Index(ctx, ref, convert.IndexOptions{Push: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("indexed %d image bytes: %d index bytes in %s", res.BlobBytes, res.Images[0].IndexBytes, res.Duration)
	return registry, ref, res
}

// startIndexStack starts a snapshotter that finds registry indexes through b, and a
// containerd using it; with remote set it replays registry traces too, logging to logger.
func startIndexStack(t *testing.T, b *testenv.BDD, remote *RemoteTraces, logger *slog.Logger) *bddStack {
	t.Helper()
	var bddOpts []BDDOption
	var opts []Opt
	if remote != nil {
		bddOpts = append(bddOpts, WithRemoteTracePrefetch(remote), WithBDDLogger(logger))
		opts = append(opts, WithRemoteTraces(remote), WithPageTraces(t.TempDir()), WithLogger(logger))
	}
	devices, err := NewBDDDevices(b.Client, t.TempDir(), bddOpts...)
	if err != nil {
		t.Fatal(err)
	}
	served := startServedSnapshotter(t, append(opts, WithDeviceManager(devices), WithRemoteIndexes(NewRemoteIndexes(b.Client, nil)))...)
	ctrd := testenv.StartContainerd(t, testenv.ContainerdOptions{
		ProxyPlugins: []testenv.ProxyPlugin{{Name: "overlaybd", Type: "snapshot", Address: served.address}},
	})
	return &bddStack{bdd: b, served: served, ctrd: ctrd}
}
