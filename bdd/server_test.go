package bdd_test

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bdd"
	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/internal/facility"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// inProcess is a Server serving its API on a socket in a temp dir.
type inProcess struct {
	reg    *prometheus.Registry
	cfg    bdd.Config
	client bddv1.DaemonClient
	log    *testenv.LogBuffer
	stop   func()
}

// startInProcess runs a Server with NBD as default transport (no root needed) over
// cfg's dirs; a second call with the same cfg plays a restarted daemon.
func startInProcess(t *testing.T, cfg bdd.Config) *inProcess {
	t.Helper()
	logs := &testenv.LogBuffer{}
	reg := prometheus.NewRegistry()
	srv, err := bdd.NewServer(cfg, slog.New(slog.NewTextHandler(logs, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := srv.Restore(ctx); err != nil {
		t.Logf("restore: %v", err)
	}
	l, err := bdd.ListenControl(cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(cfg.Socket); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode %v, %v; want 0600", st.Mode(), err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	client, conn, err := bddclient.Dial(cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	p := &inProcess{reg: reg, cfg: cfg, client: client, log: logs}
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			conn.Close()
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
			if err := srv.Shutdown(); err != nil {
				t.Errorf("shutdown: %v", err)
			}
		})
	}
	t.Cleanup(p.stop)
	return p
}

func testConfig(t *testing.T) bdd.Config {
	dir := t.TempDir()
	cfg := bdd.DefaultConfig()
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.Socket = filepath.Join(dir, "bdd.sock")
	cfg.RunDir = filepath.Join(dir, "run")
	cfg.Cache.Dir = filepath.Join(dir, "cache")
	cfg.Cache.Size = 1 << 30
	cfg.Transport = bddclient.TransportNBD
	return cfg
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// randomImage writes a disk image of size bytes with runs of random data and zeros.
func randomImage(t *testing.T, size int) string {
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for off := 0; off < size; off += splitChunk {
		if rng.IntN(4) == 0 {
			continue // a hole
		}
		for i := off; i < min(off+splitChunk, size); i++ {
			data[i] = byte(rng.Uint32())
		}
	}
	p := filepath.Join(t.TempDir(), "image")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func requireNBDTools(t *testing.T) {
	if _, err := exec.LookPath("nbdcopy"); err != nil {
		facility.Missing(t, "nbdcopy is not installed (apt-get install libnbd-bin): cannot read the NBD export")
	}
}

// nbdRead copies the whole export at socket into a file and returns its bytes.
func nbdRead(t *testing.T, socket string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "read")
	run(t, "nbdcopy", "nbd+unix:///?socket="+socket, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func grpcCode(err error) codes.Code { return status.Code(err) }

// scrapeMetrics serves reg with ServeMetrics and fetches /metrics over HTTP.
func scrapeMetrics(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go bdd.ServeMetrics(ctx, l, reg)
	resp, err := http.Get("http://" + l.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// metric returns the value of a gauge or counter without labels, failing if absent.
func (p *inProcess) metric(t *testing.T, name string) float64 {
	t.Helper()
	families, err := p.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		m := f.GetMetric()[0]
		if m.GetGauge() != nil {
			return m.GetGauge().GetValue()
		}
		return m.GetCounter().GetValue()
	}
	t.Fatalf("metric %s is not registered", name)
	return 0
}

func TestAttachNBDLocalLayers(t *testing.T) {
	requireNBDTools(t)
	img := randomImage(t, 8<<20)
	want, _ := os.ReadFile(img)
	layers := splitImage(t, img, 3, nil, false)
	cfg := testConfig(t)
	p := startInProcess(t, cfg)
	resp, err := p.client.Attach(callCtx(t), &bddv1.AttachRequest{Layers: pathLayers(layers...), ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	dev := resp.GetDevice()
	if dev.GetSize() != int64(len(want)) || dev.GetNbdSocket() == "" || !dev.GetReadOnly() {
		t.Fatalf("device %+v", dev)
	}
	if got := nbdRead(t, dev.GetNbdSocket()); !bytes.Equal(got, want) {
		t.Fatal("stack read through NBD differs from the image")
	}
	if n := p.metric(t, "obd_bdd_devices"); n != 1 {
		t.Errorf("obd_bdd_devices = %v, want 1", n)
	}
	if page := scrapeMetrics(t, p.reg); !strings.Contains(page, "obd_bdd_devices 1") {
		t.Errorf("metrics page lacks obd_bdd_devices 1:\n%s", page)
	}
	stats, err := p.client.Stats(callCtx(t), &bddv1.StatsRequest{Id: dev.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if len(stats.GetLayers()) != 3 || stats.GetLayers()[2].GetName() != layers[2] || stats.GetLayers()[0].GetMisses() != 0 {
		t.Fatalf("stats %+v", stats)
	}

	// A restarted daemon brings the device back from its state file.
	p.stop()
	p2 := startInProcess(t, cfg)
	list, err := p2.client.List(callCtx(t), &bddv1.ListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetDevices()) != 1 || list.GetDevices()[0].GetId() != dev.GetId() {
		t.Fatalf("after restart: %+v", list.GetDevices())
	}
	if got := nbdRead(t, list.GetDevices()[0].GetNbdSocket()); !bytes.Equal(got, want) {
		t.Fatal("restored device reads differ from the image")
	}
	if _, err := p2.client.Detach(callCtx(t), &bddv1.DetachRequest{Id: dev.GetId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := p2.client.Detach(callCtx(t), &bddv1.DetachRequest{Id: dev.GetId()}); grpcCode(err) != codes.NotFound {
		t.Fatalf("second detach: %v, want NotFound", err)
	}
	if list, _ := p2.client.List(callCtx(t), &bddv1.ListRequest{}); len(list.GetDevices()) != 0 {
		t.Fatalf("devices left after detach: %+v", list.GetDevices())
	}
}

func TestAttachNBDWritableUpper(t *testing.T) {
	requireNBDTools(t)
	img := randomImage(t, 4<<20)
	layers := splitImage(t, img, 2, nil, false)
	cfg := testConfig(t)
	p := startInProcess(t, cfg)
	upper := filepath.Join(t.TempDir(), "upper")
	resp, err := p.client.Attach(callCtx(t), &bddv1.AttachRequest{Layers: pathLayers(layers...), UpperDir: upper})
	if err != nil {
		t.Fatal(err)
	}
	dev := resp.GetDevice()
	// A second writer on the same upper would corrupt it.
	_, err = p.client.Attach(callCtx(t), &bddv1.AttachRequest{Layers: pathLayers(layers...), UpperDir: upper + "/"})
	if grpcCode(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "in use by device "+dev.GetId()) {
		t.Fatalf("second attach on one upper: %v", err)
	}
	// Overwrite the whole device with other bytes through NBD.
	other := randomImageSeeded(t, 4<<20, 99)
	run(t, "nbdcopy", other, "nbd+unix:///?socket="+dev.GetNbdSocket())
	want, _ := os.ReadFile(other)
	if got := nbdRead(t, dev.GetNbdSocket()); !bytes.Equal(got, want) {
		t.Fatal("written data does not read back")
	}
	// The upper is durable: a restarted daemon serves the written bytes.
	p.stop()
	p2 := startInProcess(t, cfg)
	list, _ := p2.client.List(callCtx(t), &bddv1.ListRequest{})
	if len(list.GetDevices()) != 1 {
		t.Fatalf("after restart: %+v", list.GetDevices())
	}
	if got := nbdRead(t, list.GetDevices()[0].GetNbdSocket()); !bytes.Equal(got, want) {
		t.Fatal("written data lost across a restart")
	}
}

func randomImageSeeded(t *testing.T, size int, seed uint64) string {
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, seed))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	p := filepath.Join(t.TempDir(), "other")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAttachRejectsBadRequests(t *testing.T) {
	p := startInProcess(t, testConfig(t))
	notLayer := filepath.Join(t.TempDir(), "garbage")
	os.WriteFile(notLayer, bytes.Repeat([]byte("not a layer "), 1000), 0o644)
	for name, tc := range map[string]struct {
		req  *bddv1.AttachRequest
		code codes.Code
		msg  string
	}{
		"no layers":     {&bddv1.AttachRequest{}, codes.InvalidArgument, "no layers"},
		"relative":      {&bddv1.AttachRequest{Layers: pathLayers("rel/layer")}, codes.InvalidArgument, "not absolute"},
		"missing file":  {&bddv1.AttachRequest{Layers: pathLayers("/nonexistent/layer")}, codes.NotFound, "/nonexistent/layer"},
		"not a layer":   {&bddv1.AttachRequest{Layers: pathLayers(notLayer)}, codes.InvalidArgument, notLayer},
		"bad transport": {&bddv1.AttachRequest{Layers: pathLayers(notLayer), Transport: 42}, codes.InvalidArgument, "transport"},
	} {
		_, err := p.client.Attach(callCtx(t), tc.req)
		if grpcCode(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: got %v, want %s mentioning %q", name, err, tc.code, tc.msg)
		}
	}
	if _, err := p.client.Stats(callCtx(t), &bddv1.StatsRequest{Id: "nope"}); grpcCode(err) != codes.NotFound {
		t.Errorf("stats of unknown device: %v", err)
	}
	if _, err := p.client.Prefetch(callCtx(t), &bddv1.PrefetchRequest{Trace: []byte("junk")}); grpcCode(err) != codes.InvalidArgument {
		t.Errorf("prefetch of a junk trace: %v", err)
	}
	if list, _ := p.client.List(callCtx(t), &bddv1.ListRequest{}); len(list.GetDevices()) != 0 {
		t.Errorf("failed attaches left devices: %+v", list.GetDevices())
	}
	if n := p.metric(t, "obd_bdd_attach_errors_total"); n != 5 {
		t.Errorf("obd_bdd_attach_errors_total = %v, want 5", n)
	}
	if entries, _ := os.ReadDir(filepath.Join(p.cfg.StateDir, "devices")); len(entries) != 0 {
		t.Errorf("failed attaches left state files: %v", entries)
	}
}

// TestAttachSharesLayers attaches one stack several times (its layers are opened
// once and shared), detaches one user, and replaces a layer file at its path: the
// remaining device keeps reading the old content, a new device reads the new one.
func TestAttachSharesLayers(t *testing.T) {
	requireNBDTools(t)
	img := randomImage(t, 4<<20)
	want, _ := os.ReadFile(img)
	layers := splitImage(t, img, 3, nil, false)
	p := startInProcess(t, testConfig(t))
	attach := func() *bddv1.Device {
		resp, err := p.client.Attach(callCtx(t), &bddv1.AttachRequest{Layers: pathLayers(layers...)})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetDevice()
	}
	a, b := attach(), attach()
	for _, dev := range []*bddv1.Device{a, b} {
		if !bytes.Equal(nbdRead(t, dev.GetNbdSocket()), want) {
			t.Fatalf("device %s reads wrong data", dev.GetId())
		}
	}
	if _, err := p.client.Detach(callCtx(t), &bddv1.DetachRequest{Id: a.GetId()}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(nbdRead(t, b.GetNbdSocket()), want) {
		t.Fatal("detaching one user of shared layers broke the other")
	}
	other := splitImage(t, randomImageSeeded(t, 4<<20, 5), 3, nil, false)
	if err := os.Rename(other[2], layers[2]); err != nil {
		t.Fatal(err)
	}
	c := attach()
	if bytes.Equal(nbdRead(t, c.GetNbdSocket()), want) {
		t.Fatal("a layer file replaced at the same path was not reopened")
	}
	if !bytes.Equal(nbdRead(t, b.GetNbdSocket()), want) {
		t.Fatal("replacing a layer file changed a device attached before")
	}
}

// TestPutCredentials: credentials given for a repository are kept in memory: logged by
// repository only, never in the state dir, and refused for a reference that is no reference.
func TestPutCredentials(t *testing.T) {
	cfg := testConfig(t)
	p := startInProcess(t, cfg)
	const secret = "put-credentials-Secret-99"
	if _, err := p.client.PutCredentials(t.Context(), &bddv1.PutCredentialsRequest{Ref: "registry.example/team/app:v1", Username: "u", Secret: secret}); err != nil {
		t.Fatal(err)
	}
	_, err := p.client.PutCredentials(t.Context(), &bddv1.PutCredentialsRequest{Ref: "Not A Ref", Username: "u", Secret: secret})
	if status.Code(err) != codes.InvalidArgument || strings.Contains(err.Error(), secret) {
		t.Fatalf("bad reference: %v, want InvalidArgument without the secret", err)
	}
	if logs := p.log.String(); !strings.Contains(logs, "registry.example/team/app") || strings.Contains(logs, secret) {
		t.Fatalf("log: want the repository and not the secret:\n%s", logs)
	}
	p.stop()
	_ = filepath.WalkDir(cfg.StateDir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if data, _ := os.ReadFile(path); strings.Contains(string(data), secret) {
				t.Errorf("%s holds the secret", path)
			}
		}
		return nil
	})
}
