package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// testRootfs builds (once per machine, cached) the python3 rootfs with scripts/mkrootfs.sh
// and returns the provider root holding it.
func testRootfs(t testing.TB) string {
	t.Helper()
	return filepath.Dir(testenv.PythonRootfs(t))
}

// handlerDir is a directory with testdata/handler.py as main.py, readable by nobody.
func handlerDir(t testing.TB) string {
	t.Helper()
	src, err := os.ReadFile("testdata/handler.py")
	if err != nil {
		t.Fatal(err)
	}
	dir := testenv.SearchableDir(t) // searchable: restores bind it as the sandboxes' user namespace
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.py"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func newTestManager(t testing.TB, mod func(*Config)) *Manager {
	t.Helper()
	cfg := Config{StateDir: t.TempDir(), Rootfs: DirProvider{Root: testRootfs(t)}, PoolSize: 4, KeepAlive: time.Minute}
	if mod != nil {
		mod(&cfg)
	}
	m, err := NewManager(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(cfg.StateDir, "sandboxes.log"))
			t.Logf("sandboxes.log:\n%s", log)
		}
		if err := m.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		assertNothingLeft(t, m)
	})
	return m
}

// assertNothingLeft checks that no mount, cgroup or process of m survives its Close.
func assertNothingLeft(t testing.TB, m *Manager) {
	t.Helper()
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), m.cfg.StateDir) {
		t.Errorf("mounts under %s left after Close", m.cfg.StateDir)
	}
	if left := leftCgroups(m.cfg.CgroupRoot, os.Getpid()); len(left) > 0 {
		t.Errorf("cgroups left after Close: %v", left)
	}
	if pids := runnerPids(t, m, false); len(pids) > 0 {
		t.Errorf("sandbox processes left after Close: %v", pids)
	}
}

// runnerPids lists the processes m started (zygotes, sandboxes), or only its sandboxes (run
// as nobody).
func runnerPids(t testing.TB, m *Manager, sandboxesOnly bool) []string {
	entries, _ := os.ReadDir("/proc")
	var pids []string
	for _, e := range entries {
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || !slices.Contains(strings.Split(string(env), "\x00"), "OBD_SANDBOX="+m.poolName) {
			continue
		}
		if st, err := os.Stat(filepath.Join("/proc", e.Name())); err == nil && sandboxesOnly &&
			st.Sys().(*syscall.Stat_t).Uid != uint32(m.cfg.UIDBase+nobody) {
			continue
		}
		pids = append(pids, e.Name())
	}
	return pids
}

func register(t testing.TB, m *Manager, name string, mod func(*Function)) {
	t.Helper()
	f := Function{Name: name, Image: "python3-bookworm", Entry: "main.handler", Dir: handlerDir(t), MemoryMB: 64, Pids: 16, Timeout: 5 * time.Second}
	if mod != nil {
		mod(&f)
	}
	if err := m.Register(context.Background(), f); err != nil {
		t.Fatal(err)
	}
}

func invoke(t testing.TB, m *Manager, name string, event any) (map[string]any, Result) {
	t.Helper()
	in, _ := json.Marshal(event)
	res, err := m.Invoke(context.Background(), name, in)
	if err != nil {
		t.Fatalf("invoke %s %s: %v", name, in, err)
	}
	var out map[string]any
	if err := json.Unmarshal(res.Output, &out); err != nil {
		t.Fatalf("output %s: %v", res.Output, err)
	}
	return out, res
}

func TestStartPaths(t *testing.T) {
	for _, cold := range []bool{false, true} {
		t.Run(fmt.Sprintf("nozygotes=%v", cold), func(t *testing.T) {
			m := newTestManager(t, func(c *Config) { c.NoZygotes = cold })
			register(t, m, "fn", nil)
			out, res := invoke(t, m, "fn", map[string]any{"op": "sqlite"})
			if out["sum"] != 45.0 {
				t.Fatalf("sqlite sum = %v", out)
			}
			want := sandboxapi.Warm
			if cold {
				want = sandboxapi.Cold
			}
			if res.Path != want {
				t.Fatalf("first call path %s, want %s", res.Path, want)
			}
			out, res = invoke(t, m, "fn", map[string]any{"op": "counter"})
			if res.Path != sandboxapi.Hot || out["calls"] != 1.0 {
				t.Fatalf("second call: path %s out %v; want hot, calls 1", res.Path, out)
			}
			out, _ = invoke(t, m, "fn", map[string]any{"op": "counter"})
			if out["calls"] != 2.0 {
				t.Fatalf("third call did not reuse the cached sandbox: %v", out)
			}
			st, err := m.Stats("fn")
			if err != nil {
				t.Fatal(err)
			}
			if st.Invocations != 3 || st.Hot != 2 || st.Idle != 1 || st.Errors != 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// leftCgroups lists the sandbox cgroup pools of process pid still present under root.
func leftCgroups(root string, pid int) []string {
	var left []string
	for _, c := range []string{"memory", "pids", "freezer", "cpu", ""} {
		found, _ := filepath.Glob(filepath.Join(root, c, fmt.Sprintf("obd-sandbox-%d-*", pid)))
		left = append(left, found...)
	}
	return left
}

func TestSparesRunNoHandlerCodeAhead(t *testing.T) {
	m := newTestManager(t, nil)
	register(t, m, "spare", nil)
	fn := m.funcs["spare"]
	for deadline := time.Now().Add(30 * time.Second); len(fn.spare) < cap(fn.spare); {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d spare sandboxes after 30s", len(fn.spare), cap(fn.spare))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if pids := runnerPids(t, m, true); len(pids) < cap(fn.spare) {
		t.Fatalf("%d sandbox processes for %d spares: spares are not forked ahead", len(pids), cap(fn.spare))
	}
	before := float64(time.Now().UnixNano()) / 1e9
	out, res := invoke(t, m, "spare", map[string]any{"op": "imported_at"})
	if res.Path != sandboxapi.Warm {
		t.Errorf("call with spares waiting took the %s path, want warm", res.Path)
	}
	if at := out["imported_at"].(float64); at < before {
		t.Errorf("handler module ran %.3fs before the call: spares must run no handler code ahead", before-at)
	}
	out, _ = invoke(t, m, "spare", map[string]any{"op": "whoami"})
	if out["pid"] != 1.0 || out["uid"] != float64(nobody) {
		t.Errorf("sandbox from a spare: %v, want PID 1 as nobody", out)
	}
}

func TestHandlerInAPackage(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	pkg := filepath.Join(dir, "pkg")
	if err := os.Mkdir(pkg, 0o755); err != nil {
		t.Fatal(err)
	}
	// The package's __init__ is handler code too: it must run only with the first event.
	os.WriteFile(filepath.Join(pkg, "__init__.py"), []byte("import time\nIMPORTED_AT = time.time()\n"), 0o644)
	os.WriteFile(filepath.Join(pkg, "fn.py"), []byte("from pkg import IMPORTED_AT\ndef handler(event):\n    return {'imported_at': IMPORTED_AT}\n"), 0o644)
	m := newTestManager(t, nil)
	register(t, m, "pkgfn", func(f *Function) { f.Dir = dir; f.Entry = "pkg.fn.handler" })
	fn := m.funcs["pkgfn"]
	for deadline := time.Now().Add(30 * time.Second); len(fn.spare) < cap(fn.spare) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	before := float64(time.Now().UnixNano()) / 1e9
	out, res := invoke(t, m, "pkgfn", nil)
	if res.Path != sandboxapi.Warm {
		t.Errorf("path %s, want warm", res.Path)
	}
	if at := out["imported_at"].(float64); at < before {
		t.Errorf("the handler's package ran %.3fs before the call", before-at)
	}
}

// gatedProvider is a DirProvider whose image "slow" (python3-bookworm) takes until gate
// closes to acquire, as an image attached through bdd over a slow link would.
type gatedProvider struct {
	DirProvider
	entered, gate chan struct{}
}

func (p gatedProvider) Acquire(ctx context.Context, ref string) (string, func() error, error) {
	if ref == "slow" {
		close(p.entered)
		select {
		case <-p.gate:
		case <-ctx.Done():
			return "", nil, ctx.Err()
		}
		ref = "python3-bookworm"
	}
	return p.DirProvider.Acquire(ctx, ref)
}

// TestSlowImageDoesNotBlockInvocations: acquiring an image happens outside the lock every
// invocation takes.
func TestSlowImageDoesNotBlockInvocations(t *testing.T) {
	entered, gate := make(chan struct{}), make(chan struct{})
	m := newTestManager(t, func(c *Config) { c.Rootfs = gatedProvider{DirProvider{Root: testRootfs(t)}, entered, gate} })
	register(t, m, "fast", nil)
	registered := make(chan error, 1)
	go func() {
		registered <- m.Register(context.Background(), Function{Name: "slow", Image: "slow", Entry: "main.handler", Dir: handlerDir(t)})
	}()
	<-entered
	invoked := make(chan error, 1)
	go func() {
		for i := 0; i < 3; i++ {
			if _, err := m.Invoke(context.Background(), "fast", json.RawMessage(`{"op":"echo"}`)); err != nil {
				invoked <- err
				return
			}
		}
		invoked <- nil
	}()
	// A hang detector, not a timing assertion: the invocations need nothing of the slow image.
	select {
	case err := <-invoked:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		close(gate)
		t.Fatal("invocations of another function waited for an image being acquired")
	}
	close(gate)
	if err := <-registered; err != nil {
		t.Fatal(err)
	}
	if _, res := invoke(t, m, "slow", map[string]any{"op": "echo"}); res.Path != sandboxapi.Warm {
		t.Errorf("the slow image's function: %s path", res.Path)
	}
}
