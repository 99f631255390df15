package ctrplugin

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/internal/facility"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/pagetrace"
	"github.com/obdproject/obd/snapshotter"
	"github.com/obdproject/obd/traceartifact"
	"github.com/obdproject/obd/tracestore"
	"github.com/opencontainers/go-digest"
)

// stack is one cold host: bdd with an empty cache, the overlaybd snapshotter using it, and
// containerd with the snapshotter as its proxy plugin `overlaybd`.
type stack struct {
	bdd    *testenv.BDD
	ctrd   *testenv.Containerd
	ctrObd string             // the cmd/ctr-obd binary
	snLog  *testenv.LogBuffer // the snapshotter's log
}

// stackOptions are the snapshotter settings of a stack beyond the defaults.
type stackOptions struct {
	// remoteTraces has the snapshotter replay start traces from the registry, and keep
	// page traces in a trace directory of its own.
	remoteTraces bool
	// pageTraces has the snapshotter keep page traces in this directory (record-trace's
	// --trace-dir), instead.
	pageTraces string
}

func startStack(t *testing.T, ctrObd string, opts ...stackOptions) *stack {
	t.Helper()
	var o stackOptions
	for _, opt := range opts {
		o = opt
	}
	b := testenv.StartBDD(t)
	dir := t.TempDir()
	snLog := &testenv.LogBuffer{}
	logger := slog.New(slog.NewTextHandler(snLog, &slog.HandlerOptions{Level: slog.LevelDebug}))
	bddOpts := []snapshotter.BDDOption{snapshotter.WithBDDLogger(logger)}
	snOpts := []snapshotter.Opt{snapshotter.WithLogger(logger)}
	if o.remoteTraces {
		remote := snapshotter.NewRemoteTraces(b.Client, logger)
		bddOpts = append(bddOpts, snapshotter.WithRemoteTracePrefetch(remote))
		snOpts = append(snOpts, snapshotter.WithRemoteTraces(remote))
		if o.pageTraces == "" {
			o.pageTraces = filepath.Join(dir, "traces")
		}
	}
	if o.pageTraces != "" {
		snOpts = append(snOpts, snapshotter.WithPageTraces(o.pageTraces))
	}
	devices, err := snapshotter.NewBDDDevices(b.Client, filepath.Join(dir, "devices"), bddOpts...)
	if err != nil {
		t.Fatal(err)
	}
	sn, err := snapshotter.NewSnapshotter(filepath.Join(dir, "root"), append(snOpts, snapshotter.WithDeviceManager(devices))...)
	if err != nil {
		t.Fatal(err)
	}
	address := filepath.Join(dir, "sn.sock")
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- snapshotter.Serve(ctx, sn, address) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("snapshotter Serve: %v", err)
		}
		if err := sn.Close(); err != nil {
			t.Errorf("snapshotter Close: %v", err)
		}
		if err := testenv.UnmountAll(dir); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("snapshotter log:\n%s", snLog.String())
		}
	})
	ctrd := testenv.StartContainerd(t, testenv.ContainerdOptions{
		ProxyPlugins: []testenv.ProxyPlugin{{Name: Snapshotter, Type: "snapshot", Address: address}},
	})
	return &stack{bdd: b, ctrd: ctrd, ctrObd: ctrObd, snLog: snLog}
}

// ctr runs ctr-obd against the stack's containerd and bdd and returns its standard output.
func (s *stack) ctr(t *testing.T, args ...string) string {
	t.Helper()
	stdout, stderr, err := s.tryCtr(args...)
	if err != nil {
		t.Fatalf("ctr-obd %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout, stderr)
	}
	return stdout
}

// tryCtr runs ctr-obd like ctr, returning its failure instead of failing the test.
func (s *stack) tryCtr(args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args = append([]string{"--address", s.ctrd.Address, "--namespace", s.ctrd.Namespace}, args...)
	cmd := exec.CommandContext(ctx, s.ctrObd, args...)
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(testenv.DepsDir(), "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// deviceFetches returns what bdd's only device fetched from the registry on demand: reads that
// missed the cache and the bytes they fetched.
func (s *stack) deviceFetches(t *testing.T) (misses, bytesFetched uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := s.bdd.Client.List(ctx, &bddv1.ListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetDevices()) != 1 {
		t.Fatalf("bdd devices = %v, want the image's one device", list.GetDevices())
	}
	stats, err := s.bdd.Client.Stats(ctx, &bddv1.StatsRequest{Id: list.GetDevices()[0].GetId()})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range stats.GetLayers() {
		misses += l.GetMisses()
		bytesFetched += l.GetBytesFetched()
	}
	return misses, bytesFetched
}

func (s *stack) waitNoDevices(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		list, err := s.bdd.Client.List(context.Background(), &bddv1.ListRequest{})
		if err == nil && len(list.GetDevices()) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("bdd still has devices 30 s after the container went: %v (%v)", list.GetDevices(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func buildCtrObd(t *testing.T) string {
	t.Helper()
	return buildCommand(t, "ctr-obd")
}

// buildCommand builds cmd/<name> and returns the binary.
func buildCommand(t *testing.T, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/obdproject/obd/cmd/"+name).CombinedOutput(); err != nil {
		t.Fatalf("build cmd/%s: %v\n%s", name, err, out)
	}
	return bin
}

// requireStackFacilities skips an end-to-end test in -short mode or without root or overlayfs.
func requireStackFacilities(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: runs bdd, containerd, the snapshotter and containers")
	}
	testenv.RequireRoot(t)
	if data, err := os.ReadFile("/proc/filesystems"); err != nil || !strings.Contains(string(data), "\toverlay\n") {
		facility.Missing(t, "overlayfs is not available in this kernel")
	}
}

// pushPlainBusybox pushes the test busybox image, unconverted, to registry and returns its
// reference.
func pushPlainBusybox(t *testing.T, registry *testregistry.Registry) string {
	t.Helper()
	skopeo := testenv.Bin(t, "skopeo")
	plain := testenv.BuildBusyboxImage(t)
	plainRef := registry.Host + "/obdtest/busybox:plain"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, skopeo, "copy", "--dest-tls-verify=false",
		"oci:"+plain.Layout+":"+plain.Tag, "docker://"+plainRef).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}
	return plainRef
}

// startWorkload is what a container's start reads: the shell, busybox in full, a directory.
const startWorkload = "cat /bin/busybox > /dev/null; ls -l /bin > /dev/null; echo started"

// TestE2ERpullObdconvRecordTrace runs the three commands end to end against a real registry,
// containerd, the overlaybd snapshotter and bdd: obdconv converts a plain image, rpull pulls
// it fetching no layer, a start reads on demand, record-trace stores a trace, and on a second
// cold host rpull prefetches it so that the same start fetches less on the critical path.
func TestE2ERpullObdconvRecordTrace(t *testing.T) {
	requireStackFacilities(t)
	ctrObd := buildCtrObd(t)
	registry := testregistry.Start(t, testregistry.Options{})
	plainRef, obdRef := pushPlainBusybox(t, registry), registry.Host+"/obdtest/busybox:obd"
	traceDir := filepath.Join(t.TempDir(), "traces")

	first := startStack(t, ctrObd, stackOptions{pageTraces: traceDir})
	out := first.ctr(t, "obdconv", "--work-dir", t.TempDir(), "--vsize", "256M", plainRef, obdRef)
	if !strings.HasPrefix(out, obdRef+" sha256:") {
		t.Fatalf("obdconv output = %q, want the pushed reference and digest", out)
	}

	// Bad input: a plain image is refused before any layer is fetched, and record-trace wants
	// an image rpull has unpacked.
	blobGets := registry.BlobGets()
	if _, stderr, err := first.tryCtr("rpull", plainRef); err == nil || !strings.Contains(stderr, ErrNotOverlaybd.Error()) {
		t.Fatalf("rpull of a plain image: err %v, stderr %q; want a %q error", err, stderr, ErrNotOverlaybd)
	}
	if n := registry.BlobGets() - blobGets; n != 0 {
		t.Fatalf("the refused rpull fetched %d blobs, want none", n)
	}
	if _, stderr, err := first.tryCtr("record-trace", "--bdd-socket", first.bdd.Socket, obdRef, filepath.Join(t.TempDir(), "t")); err == nil || !strings.Contains(stderr, "rpull it first") {
		t.Fatalf("record-trace of an image not pulled: err %v, stderr %q; want advice to rpull it", err, stderr)
	}

	// rpull fetches the config and no layer blob.
	blobGets = registry.BlobGets()
	out = first.ctr(t, "rpull", "--trace-dir", traceDir, "--bdd-socket", first.bdd.Socket, obdRef)
	if n := registry.BlobGets() - blobGets; n != 1 {
		t.Fatalf("rpull fetched %d blobs, want only the config:\n%s", n, out)
	}
	if !strings.Contains(out, "no start trace recorded") {
		t.Fatalf("rpull without a trace: output %q does not say so", out)
	}
	if images := first.ctr(t, "images", "ls", "-q"); !strings.Contains(images, obdRef) {
		t.Fatalf("images ls after rpull = %q, want %s", images, obdRef)
	}

	// An untraced start reads on demand; the container stays (stopped) so the device does too.
	if out := first.ctr(t, "run", "--snapshotter", Snapshotter, obdRef, "untraced", "sh", "-c", startWorkload); strings.TrimSpace(out) != "started" {
		t.Fatalf("untraced run output = %q", out)
	}
	untracedMisses, untracedBytes := first.deviceFetches(t)
	first.ctr(t, "containers", "rm", "untraced")
	first.waitNoDevices(t)
	if untracedBytes == 0 {
		t.Fatal("the untraced start fetched nothing: the image is not read lazily")
	}

	traceFile := filepath.Join(t.TempDir(), "start.trace")
	resolver := docker.NewResolver(docker.ResolverOptions{})
	regCtx, regCancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer regCancel()
	_, image, err := resolver.Resolve(regCtx, obdRef)
	if err != nil {
		t.Fatal(err)
	}
	out = first.ctr(t, "record-trace", "--push", "--trace-dir", traceDir, "--bdd-socket", first.bdd.Socket, obdRef, traceFile, "--", "sh", "-c", startWorkload)
	if !strings.HasPrefix(out, "started\n") || !strings.Contains(out, "recorded a trace of 1 blobs") {
		t.Fatalf("record-trace output = %q, want the command's output and a one-blob trace", out)
	}
	if want := "for " + obdRef + "@" + image.Digest.String(); !strings.Contains(out, "pushed start trace sha256:") || !strings.Contains(out, want) {
		t.Fatalf("record-trace --push output = %q, want a pushed artifact %s", out, want)
	}
	if !strings.Contains(out, "block trace, the page trace ") {
		t.Fatalf("record-trace --push output = %q, want the run's page trace pushed with it", out)
	}
	first.waitNoDevices(t)
	data, err := os.ReadFile(traceFile)
	if err != nil {
		t.Fatal(err)
	}
	trace, err := blocktrace.Decode(data)
	if err != nil {
		t.Fatalf("record-trace wrote an unreadable trace: %v", err)
	}
	if len(trace.Blobs) != 1 || len(trace.Blobs[0].Ranges) == 0 {
		t.Fatalf("trace = %+v, want ranges of the image's one blob", trace)
	}
	chain, err := tracestore.ChainID([]digest.Digest{trace.Blobs[0].Digest})
	if err != nil {
		t.Fatal(err)
	}
	if storedTrace, err := (tracestore.Store{Dir: traceDir}).Load(chain); err != nil || !bytes.Equal(storedTrace, data) {
		t.Fatalf("trace stored under the image's chain: %v (equal to the file: %v)", err, bytes.Equal(storedTrace, data))
	}
	// The pushed artifact holds the same trace, and the image is as it was.
	if _, now, err := resolver.Resolve(regCtx, obdRef); err != nil || now.Digest != image.Digest {
		t.Fatalf("after record-trace --push the image is %s (%v), want %s", now.Digest, err, image.Digest)
	}
	artifacts, err := traceartifact.List(regCtx, resolver, obdRef, image.Digest)
	if err != nil || len(artifacts) != 1 {
		t.Fatalf("start traces of the image in the registry: %v, %v; want the pushed one", artifacts, err)
	}
	pushed, err := traceartifact.Fetch(regCtx, resolver, obdRef, image.Digest, artifacts[0])
	if err != nil || !bytes.Equal(pushed.Blocks, data) {
		t.Fatalf("the pushed trace differs from the recorded one (err %v)", err)
	}
	// The run's page trace went with it: the busybox binary the run read.
	pages, err := pagetrace.Decode(pushed.Pages)
	if err != nil {
		t.Fatalf("pushed page trace: %v", err)
	}
	if files := pageFiles(pages); !files["bin/busybox"] {
		t.Fatalf("pushed page trace covers %v, want bin/busybox, which the run read", files)
	}

	// A second cold host: rpull prefetches the trace, and the same start then fetches less.
	second := startStack(t, ctrObd)
	out = second.ctr(t, "rpull", "--trace-dir", traceDir, "--bdd-socket", second.bdd.Socket, obdRef)
	if !strings.Contains(out, "prefetched the start trace") {
		t.Fatalf("rpull with a recorded trace: output %q does not report a prefetch", out)
	}
	if out := second.ctr(t, "run", "--snapshotter", Snapshotter, obdRef, "traced", "sh", "-c", startWorkload); strings.TrimSpace(out) != "started" {
		t.Fatalf("traced run output = %q", out)
	}
	tracedMisses, tracedBytes := second.deviceFetches(t)
	second.ctr(t, "containers", "rm", "traced")
	second.waitNoDevices(t)
	t.Logf("critical path of the start: untraced %d misses, %d bytes fetched; traced %d misses, %d bytes fetched",
		untracedMisses, untracedBytes, tracedMisses, tracedBytes)
	if tracedBytes >= untracedBytes || tracedMisses >= untracedMisses {
		t.Fatalf("the traced start fetched %d bytes in %d misses, not less than the untraced %d bytes in %d misses",
			tracedBytes, tracedMisses, untracedBytes, untracedMisses)
	}

	// A command that does not exit: recording stops at --run-timeout and the container goes.
	// (tryCtr's 3-minute bound fails the call if the 600 s command is waited for.)
	_, stderr, err := second.tryCtr("record-trace", "--run-timeout", "2s", "--trace-dir", t.TempDir(), "--bdd-socket", second.bdd.Socket,
		obdRef, filepath.Join(t.TempDir(), "sleep.trace"), "--", "sleep", "600")
	if err != nil || !strings.Contains(stderr, "recording stops") {
		t.Fatalf("record-trace of a long command: err %v, stderr %q; want the trace cut at the timeout", err, stderr)
	}
	if containers := second.ctr(t, "containers", "ls", "-q"); strings.TrimSpace(containers) != "" {
		t.Fatalf("record-trace left containers behind: %q", containers)
	}
	second.waitNoDevices(t)
}

// pageFiles returns the files a page trace covers.
func pageFiles(pages pagetrace.Trace) map[string]bool {
	files := map[string]bool{}
	for _, r := range pages {
		files[r.Path] = true
	}
	return files
}

// TestE2ERecordTraceWarmEqualsCold: record-trace on a node that has run the image (bdd's cache
// holds every byte the start reads, the image's shared device is mounted with those bytes in
// its page cache) records the same ranges as on a cold node, and pushes the page trace of its
// own run rather than the one the node had stored.
func TestE2ERecordTraceWarmEqualsCold(t *testing.T) {
	requireStackFacilities(t)
	ctrObd := buildCtrObd(t)
	registry := testregistry.Start(t, testregistry.Options{})
	plainRef, obdRef := pushPlainBusybox(t, registry), registry.Host+"/obdtest/busybox:obd"

	record := func(s *stack, traceDir string) (blocktrace.Trace, string) {
		t.Helper()
		traceFile := filepath.Join(t.TempDir(), "start.trace")
		out := s.ctr(t, "record-trace", "--push", "--trace-dir", traceDir, "--bdd-socket", s.bdd.Socket, obdRef, traceFile, "--", "sh", "-c", startWorkload)
		data, err := os.ReadFile(traceFile)
		if err != nil {
			t.Fatal(err)
		}
		trace, err := blocktrace.Decode(data)
		if err != nil {
			t.Fatal(err)
		}
		return trace, out
	}

	coldDir := filepath.Join(t.TempDir(), "traces")
	cold := startStack(t, ctrObd, stackOptions{pageTraces: coldDir})
	cold.ctr(t, "obdconv", "--work-dir", t.TempDir(), "--vsize", "256M", plainRef, obdRef)
	cold.ctr(t, "rpull", "--trace-dir", coldDir, "--bdd-socket", cold.bdd.Socket, obdRef)
	coldTrace, _ := record(cold, coldDir)

	warmDir := filepath.Join(t.TempDir(), "traces")
	warm := startStack(t, ctrObd, stackOptions{pageTraces: warmDir})
	warm.ctr(t, "rpull", "--trace-dir", warmDir, "--bdd-socket", warm.bdd.Socket, obdRef)
	// The start once: bdd's cache gets what it reads; the stopped container keeps the image's
	// device, and what it read in its page cache.
	if out := warm.ctr(t, "run", "--snapshotter", Snapshotter, obdRef, "warm", "sh", "-c", startWorkload); strings.TrimSpace(out) != "started" {
		t.Fatalf("warm-up run output = %q", out)
	}
	if _, fetched := warm.deviceFetches(t); fetched == 0 {
		t.Fatal("the warm-up run fetched nothing: the image is not read lazily")
	}
	// An older page trace of the image on this node, which the push must not take.
	chain, err := tracestore.ChainID([]digest.Digest{coldTrace.Blobs[0].Digest})
	if err != nil {
		t.Fatal(err)
	}
	if err := (tracestore.Store{Dir: warmDir}).SavePages(chain, pagetrace.Trace{{Off: 0, Len: 4096, Path: "older/run"}}); err != nil {
		t.Fatal(err)
	}
	blobGets := registry.BlobGets()
	warmTrace, out := record(warm, warmDir)
	t.Logf("record-trace on the warm node fetched %d blobs from the registry", registry.BlobGets()-blobGets)

	if got, want := traceRanges(warmTrace), traceRanges(coldTrace); got != want {
		t.Fatalf("record-trace on a warm node recorded\n%s\non a cold node\n%s", got, want)
	}
	t.Logf("both nodes recorded %s", traceRanges(coldTrace))

	resolver := docker.NewResolver(docker.ResolverOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, image, err := resolver.Resolve(ctx, obdRef)
	if err != nil {
		t.Fatal(err)
	}
	artifacts, err := traceartifact.List(ctx, resolver, obdRef, image.Digest)
	if err != nil || len(artifacts) != 2 {
		t.Fatalf("start traces of the image: %v, %v; want the two pushed", artifacts, err)
	}
	var warmPages pagetrace.Trace
	for _, a := range artifacts {
		pushed, err := traceartifact.Fetch(ctx, resolver, obdRef, image.Digest, a)
		if err != nil {
			t.Fatal(err)
		}
		pages, err := pagetrace.Decode(pushed.Pages)
		if err != nil {
			t.Fatalf("pushed page trace of %s: %v", a.Digest, err)
		}
		if files := pageFiles(pages); !files["bin/busybox"] || files["older/run"] {
			t.Fatalf("pushed page trace covers %v, want the run's bin/busybox and nothing older (record-trace said %q)", files, out)
		}
		warmPages = pages
	}
	warm.ctr(t, "containers", "rm", "warm")
	warm.waitNoDevices(t)
	// The shared device, gone now, left the own device's page trace in place.
	if stored, err := (tracestore.Store{Dir: warmDir}).LoadPages(chain); err != nil || !pageFiles(stored)["bin/busybox"] {
		t.Fatalf("page trace stored on the warm node after its devices went: %v (%v), want the recorded run's (%v)", stored, err, pageFiles(warmPages))
	}
}

// traceRanges describes a trace's ranges, blob by blob in digest order, for comparison:
// first-read order depends on how the kernel happened to queue reads, the ranges do not.
func traceRanges(trace blocktrace.Trace) string {
	blobs := slices.SortedFunc(slices.Values(trace.Blobs), func(a, b blocktrace.Blob) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
	var b strings.Builder
	for _, blob := range blobs {
		fmt.Fprintf(&b, "%s:", blob.Digest.Encoded()[:12])
		var total int64
		for _, r := range blob.Ranges {
			fmt.Fprintf(&b, " %d+%d", r.Off, r.Len)
			total += r.Len
		}
		fmt.Fprintf(&b, " (%d ranges, %d bytes)\n", len(blob.Ranges), total)
	}
	return b.String()
}
