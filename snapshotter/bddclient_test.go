package snapshotter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/tracestore"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// loopBDD serves bdd's control API over a real unix socket, with devices made by loopDevices,
// so that BDDDevices is exercised through gRPC down to a mounted loop device.
type loopBDD struct {
	bddv1.UnimplementedDaemonServer
	devices *loopDevices

	mu       sync.Mutex
	next     int
	attached map[string]*bddv1.Device
	requests []*bddv1.AttachRequest
	// busy makes that many Detach calls fail as bdd does for a device still held.
	busy int
	// prefetched receives the trace of every Prefetch call.
	prefetched chan []byte
	// holdReplays makes Prefetch last until its caller ends it; replayEnded then gets why.
	holdReplays bool
	replayEnded chan error
	// failAttach makes Attach fail; with holdReplays, only once a replay is running, so
	// that the failure has a replay to call off.
	failAttach    bool
	replayRunning chan struct{}
	// registry holds start traces by manifest digest, for FetchTrace; fetchTraces counts
	// its calls by manifest digest.
	registry    map[string][]byte
	fetchTraces map[string]int
}

func startLoopBDD(t *testing.T, devices *loopDevices) (*loopBDD, bddv1.DaemonClient) {
	t.Helper()
	server := &loopBDD{devices: devices, attached: map[string]*bddv1.Device{}, registry: map[string][]byte{}, fetchTraces: map[string]int{}, prefetched: make(chan []byte, 8), replayEnded: make(chan error, 8), replayRunning: make(chan struct{}, 8)}
	socket := filepath.Join(t.TempDir(), "bdd.sock")
	listener, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	bddv1.RegisterDaemonServer(srv, server)
	go func() { _ = srv.Serve(listener) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return server, bddv1.NewDaemonClient(conn)
}

func (s *loopBDD) Attach(ctx context.Context, req *bddv1.AttachRequest) (*bddv1.AttachResponse, error) {
	s.mu.Lock()
	s.requests = append(s.requests, req)
	fail, waitForReplay := s.failAttach, s.holdReplays
	s.mu.Unlock()
	if fail {
		if waitForReplay {
			select {
			case <-s.replayRunning:
			case <-ctx.Done():
				return nil, status.FromContextError(ctx.Err()).Err()
			}
		}
		return nil, status.Error(codes.Internal, "attach refused by the test")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var layers []RemoteLayer
	for _, l := range req.GetLayers() {
		b := l.GetBlob()
		layers = append(layers, RemoteLayer{Ref: b.GetRef(), Digest: digest.Digest(b.GetDigest()), Size: b.GetSize()})
	}
	s.next++
	id := fmt.Sprintf("dev%d", s.next)
	path, err := s.devices.Attach(ctx, id, layers, req.GetUpperDir())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	dev := &bddv1.Device{Id: id, Layers: req.GetLayers(), UpperDir: req.GetUpperDir(), ReadOnly: req.GetReadOnly(), DevicePath: path}
	s.attached[id] = dev
	return &bddv1.AttachResponse{Device: dev}, nil
}

func (s *loopBDD) Detach(ctx context.Context, req *bddv1.DetachRequest) (*bddv1.DetachResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.attached[req.GetId()]; !ok {
		return nil, status.Errorf(codes.NotFound, "no device %s", req.GetId())
	}
	if s.busy > 0 {
		s.busy--
		return nil, status.Errorf(codes.FailedPrecondition, "device %s is busy", req.GetId())
	}
	if err := s.devices.Detach(ctx, req.GetId()); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	delete(s.attached, req.GetId())
	return &bddv1.DetachResponse{}, nil
}

func (s *loopBDD) List(context.Context, *bddv1.ListRequest) (*bddv1.ListResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &bddv1.ListResponse{}
	for _, dev := range s.attached {
		resp.Devices = append(resp.Devices, dev)
	}
	return resp, nil
}

func (s *loopBDD) Prefetch(ctx context.Context, req *bddv1.PrefetchRequest) (*bddv1.PrefetchResponse, error) {
	s.prefetched <- req.GetTrace()
	s.mu.Lock()
	hold := s.holdReplays
	s.mu.Unlock()
	if hold {
		s.replayRunning <- struct{}{}
		<-ctx.Done()
		s.replayEnded <- ctx.Err()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return &bddv1.PrefetchResponse{}, nil
}

func (s *loopBDD) FetchTrace(ctx context.Context, req *bddv1.FetchTraceRequest) (*bddv1.FetchTraceResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fetchTraces[req.GetManifestDigest()]++
	trace, ok := s.registry[req.GetManifestDigest()]
	return &bddv1.FetchTraceResponse{Found: ok, Trace: trace, ArtifactDigest: digest.FromBytes(trace).String()}, nil
}

func (s *loopBDD) fetchTraceCalls(manifest digest.Digest) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fetchTraces[manifest.String()]
}

// forget drops a device from the server's books without detaching it, as a bdd whose state
// was wiped would.
func (s *loopBDD) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.attached, id)
}

func (s *loopBDD) setBusy(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.busy = n
}

func (s *loopBDD) attachRequests() []*bddv1.AttachRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*bddv1.AttachRequest(nil), s.requests...)
}

func TestBDDDevicesServeTheSnapshotter(t *testing.T) {
	requireOverlay(t)
	ctx := context.Background()
	devices := newLoopDevices(t)
	bdd, client := startLoopBDD(t, devices)
	root := t.TempDir()
	manager, err := NewBDDDevices(client, filepath.Join(root, "devices"))
	if err != nil {
		t.Fatal(err)
	}
	sn, err := NewSnapshotter(root, WithDeviceManager(manager))
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	lower := devices.addBlob(map[string]string{"etc/os": "lower"})
	upper := devices.addBlob(map[string]string{"bin/app": "upper"})
	top := prepareLazyChain(t, sn, "app", lower, upper)

	mounts, err := sn.Prepare(ctx, "c", top)
	if err != nil {
		t.Fatal(err)
	}
	rootfs := mountRootfs(t, mounts)
	assertFile(t, filepath.Join(rootfs, "etc/os"), "lower")
	assertFile(t, filepath.Join(rootfs, "bin/app"), "upper")

	reqs := bdd.attachRequests()
	if len(reqs) != 1 || !reqs[0].GetReadOnly() || reqs[0].GetUpperDir() != "" || len(reqs[0].GetLayers()) != 2 {
		t.Fatalf("attach requests = %v, want one read-only attach of two layers", reqs)
	}
	for i, want := range []RemoteLayer{lower, upper} {
		blob := reqs[0].GetLayers()[i].GetBlob()
		if blob.GetRef() != "registry.test/app" || blob.GetDigest() != want.Digest.String() || blob.GetSize() != want.Size {
			t.Fatalf("layer %d = %v, want repository registry.test/app, %s, %d", i, blob, want.Digest, want.Size)
		}
	}

	unmountRootfs(t, rootfs)
	if err := sn.Remove(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	assertCounts(t, devices, 0, 1, 1)
	if entries, _ := os.ReadDir(filepath.Join(root, "devices")); len(entries) != 0 {
		t.Fatalf("device records left after detach: %v", entries)
	}
}

func TestBDDDevicesIdempotence(t *testing.T) {
	ctx := context.Background()
	devices := newLoopDevices(t)
	bdd, client := startLoopBDD(t, devices)
	stateDir := t.TempDir()
	layer := devices.addBlob(map[string]string{"f": "x"})
	first, err := NewBDDDevices(client, stateDir)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := first.Attach(ctx, "k", []RemoteLayer{layer}, "")
	if err != nil {
		t.Fatal(err)
	}

	// A restarted snapshotter finds the device bdd still serves instead of attaching another.
	second, err := NewBDDDevices(client, stateDir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := second.Attach(ctx, "k", []RemoteLayer{layer}, "")
	if err != nil || again != dev || len(bdd.attachRequests()) != 1 {
		t.Fatalf("re-attach = %q, %v after %d attaches; want %q from the first attach", again, err, len(bdd.attachRequests()), dev)
	}

	// A bdd that lost the device gets a new attach.
	bdd.forget("dev1")
	if _, err := second.Attach(ctx, "k", []RemoteLayer{layer}, ""); err != nil {
		t.Fatal(err)
	}
	if n := len(bdd.attachRequests()); n != 2 {
		t.Fatalf("attaches = %d, want 2 after bdd lost the device", n)
	}
	if err := devices.Detach(ctx, "dev1"); err != nil { // the forgotten one
		t.Fatal(err)
	}

	// A device the kernel still holds for a moment is detached once it lets go ...
	bdd.setBusy(2)
	if err := second.Detach(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	// ... and one that stays busy is reported, and stays recorded for a later try.
	if _, err := second.Attach(ctx, "held", []RemoteLayer{layer}, ""); err != nil {
		t.Fatal(err)
	}
	bdd.setBusy(busyRetries + 1)
	if err := second.Detach(ctx, "held"); status.Code(errors.Unwrap(err)) != codes.FailedPrecondition {
		t.Fatalf("Detach of a device that stays busy: err = %v, want FailedPrecondition", err)
	}
	if err := second.Detach(ctx, "held"); err != nil {
		t.Fatal(err)
	}
	if err := second.Detach(ctx, "k"); err != nil {
		t.Fatalf("second Detach: %v, want nil", err)
	}
	if _, err := second.Attach(ctx, "../escape", nil, ""); err == nil || !strings.Contains(err.Error(), "plain name") {
		t.Fatalf("Attach with a path as key: err = %v", err)
	}
	if _, err := second.Attach(ctx, "bad-ref", []RemoteLayer{{Ref: "Not A Ref", Digest: layer.Digest, Size: 1}}, ""); err == nil {
		t.Fatal("Attach with an invalid image reference succeeded")
	}
	assertCounts(t, devices, 0, 3, 3)
}

func TestRepository(t *testing.T) {
	for ref, want := range map[string]string{
		"127.0.0.1:5000/app:latest":                     "127.0.0.1:5000/app",
		"registry.test/ns/app@sha256:" + digestHex('a'): "registry.test/ns/app",
		"busybox": "docker.io/library/busybox",
		"registry.test/app:v1@sha256:" + digestHex('b'):    "registry.test/app",
		"localhost:5000/deep/path/app:with-tag.and_more-1": "localhost:5000/deep/path/app",
	} {
		got, err := repository(ref)
		if err != nil || got != want {
			t.Errorf("repository(%q) = %q, %v; want %q", ref, got, err, want)
		}
	}
	for _, bad := range []string{"", "app/UPPER", "a b", "app@sha256:short"} {
		if got, err := repository(bad); err == nil {
			t.Errorf("repository(%q) = %q, want an error", bad, got)
		}
	}
}

// TestBDDDevicesPrefetchRecordedTrace: a new device for a chain whose start trace was recorded
// replays that trace through bdd; a chain without one does not.
func TestBDDDevicesPrefetchRecordedTrace(t *testing.T) {
	ctx := context.Background()
	devices := newLoopDevices(t)
	bdd, client := startLoopBDD(t, devices)
	traceDir := filepath.Join(t.TempDir(), "traces")
	manager, err := NewBDDDevices(client, filepath.Join(t.TempDir(), "devices"), WithTracePrefetch(traceDir))
	if err != nil {
		t.Fatal(err)
	}
	traced := []RemoteLayer{devices.addBlob(map[string]string{"a": "1"}), devices.addBlob(map[string]string{"b": "2"})}
	untraced := []RemoteLayer{devices.addBlob(map[string]string{"c": "3"})}

	chain, err := tracestore.ChainID([]digest.Digest{traced[0].Digest, traced[1].Digest})
	if err != nil {
		t.Fatal(err)
	}
	tr := blocktrace.Trace{Blobs: []blocktrace.Blob{{
		Ref: traced[1].Ref, Digest: traced[1].Digest, Size: traced[1].Size,
		Ranges: []blocktrace.Range{{Off: 0, Len: 4096}},
	}}}
	want, err := tr.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := (tracestore.Store{Dir: traceDir}).Save(chain, want); err != nil {
		t.Fatal(err)
	}

	if _, err := manager.Attach(ctx, "untraced", untraced, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := manager.Attach(ctx, "traced", traced, ""); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-bdd.prefetched:
		if !bytes.Equal(got, want) {
			t.Errorf("prefetched trace %q, want the recorded %q", got, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no Prefetch reached bdd within 30s of attaching a chain with a recorded trace")
	}
	select {
	case got := <-bdd.prefetched:
		t.Errorf("a second Prefetch (%q): the untraced chain must not prefetch", got)
	default:
	}
	for _, key := range []string{"traced", "untraced"} {
		if err := manager.Detach(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBDDDevicesAttachFailureStopsReplay: when bdd cannot attach a chain, the replay of its
// trace, started just before, is called off instead of running to its timeout.
func TestBDDDevicesAttachFailureStopsReplay(t *testing.T) {
	devices := newLoopDevices(t)
	bdd, client := startLoopBDD(t, devices)
	bdd.mu.Lock()
	bdd.holdReplays, bdd.failAttach = true, true
	bdd.mu.Unlock()
	traceDir := filepath.Join(t.TempDir(), "traces")
	manager, err := NewBDDDevices(client, filepath.Join(t.TempDir(), "devices"), WithTracePrefetch(traceDir))
	if err != nil {
		t.Fatal(err)
	}
	layers := []RemoteLayer{devices.addBlob(map[string]string{"a": "1"})}
	chain, err := tracestore.ChainID([]digest.Digest{layers[0].Digest})
	if err != nil {
		t.Fatal(err)
	}
	tr := blocktrace.Trace{Blobs: []blocktrace.Blob{{Ref: layers[0].Ref, Digest: layers[0].Digest, Size: layers[0].Size,
		Ranges: []blocktrace.Range{{Off: 0, Len: 4096}}}}}
	enc, err := tr.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := (tracestore.Store{Dir: traceDir}).Save(chain, enc); err != nil {
		t.Fatal(err)
	}
	if _, err := manager.Attach(context.Background(), "failing", layers, ""); err == nil {
		t.Fatal("attach succeeded though bdd refused it")
	}
	select {
	case err := <-bdd.replayEnded:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("replay ended with %v, want it canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the replay still ran 30s after its attach failed")
	}
}

// TestBDDDevicesReadThroughTheImage: a chain whose lower layer was brought by another image is
// attached with every layer in the repository of the image being run.
func TestBDDDevicesReadThroughTheImage(t *testing.T) {
	requireOverlay(t)
	devices := newLoopDevices(t)
	bdd, client := startLoopBDD(t, devices)
	manager, err := NewBDDDevices(client, filepath.Join(t.TempDir(), "devices"))
	if err != nil {
		t.Fatal(err)
	}
	lower := devices.addBlob(map[string]string{"etc/os": "lower"})
	lower.Ref = "registry.test/public/base:v1"
	upper := devices.addBlob(map[string]string{"bin/app": "upper"})
	upper.Ref = "registry.test/private/app:v2"
	if _, err := manager.Attach(context.Background(), "private-app", []RemoteLayer{lower, upper}, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = manager.Detach(context.Background(), "private-app") })
	reqs := bdd.attachRequests()
	if len(reqs) != 1 {
		t.Fatalf("attach requests = %v, want one", reqs)
	}
	for i, l := range reqs[0].GetLayers() {
		if got := l.GetBlob().GetRef(); got != "registry.test/private/app" {
			t.Errorf("layer %d read through %q, want the image's repository registry.test/private/app", i, got)
		}
	}
}

// TestBDDDevicesReconcileOrphans plays a snapshotter killed between bdd's Attach and
// recording the device, against a real bdd: attaching the key again returns the device bdd
// has (no second one), and Reconcile at the next start detaches a device whose snapshot
// has no record, leaving recorded devices and other clients' devices alone.
func TestBDDDevicesReconcileOrphans(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: runs bdd")
	}
	b := testenv.StartBDD(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tree := t.TempDir()
	if err := os.WriteFile(filepath.Join(tree, "f"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "layer.tar")
	if err := os.WriteFile(file, overlaybdBlob(t, tree), 0o644); err != nil {
		t.Fatal(err)
	}
	layers := []RemoteLayer{{Path: file}}
	stateDir := t.TempDir()
	crashed, err := NewBDDDevices(b.Client, stateDir)
	if err != nil {
		t.Fatal(err)
	}
	// What the killed snapshotter sent: Attach reached bdd, the records were never written.
	unrecorded := func(key string) *bddv1.Device {
		req, err := crashed.attachRequest(key, layers, "")
		if err != nil {
			t.Fatal(err)
		}
		resp, err := b.Client.Attach(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetDevice()
	}
	kept, orphan := unrecorded("kept"), unrecorded("gone")
	other, err := b.Client.Attach(ctx, &bddv1.AttachRequest{Layers: []*bddv1.Layer{{Source: &bddv1.Layer_Path{Path: file}}}, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}

	restarted, err := NewBDDDevices(b.Client, stateDir)
	if err != nil {
		t.Fatal(err)
	}
	path, err := restarted.Attach(ctx, "kept", layers, "")
	if err != nil || path != kept.GetDevicePath() {
		t.Fatalf("attach of the unrecorded key: %q, %v; want bdd's device %q", path, err, kept.GetDevicePath())
	}
	if err := restarted.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	list, err := b.Client.List(ctx, &bddv1.ListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	left := map[string]bool{}
	for _, d := range list.GetDevices() {
		left[d.GetId()] = true
	}
	if !left[kept.GetId()] || !left[other.GetDevice().GetId()] || left[orphan.GetId()] || len(left) != 2 {
		t.Fatalf("devices after Reconcile: %v; want %s (recorded) and %s (another client's), not the orphan %s",
			left, kept.GetId(), other.GetDevice().GetId(), orphan.GetId())
	}
	if err := restarted.Detach(ctx, "kept"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Client.Detach(ctx, &bddv1.DetachRequest{Id: other.GetDevice().GetId()}); err != nil {
		t.Fatal(err)
	}
}
