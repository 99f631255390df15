package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// forEachPath runs fn against a manager whose sandboxes start cold, one whose sandboxes are
// forked from zygotes ahead of demand (spares), and one that forks them on demand: the
// isolation properties must hold on every path.
func forEachPath(t *testing.T, fn func(t *testing.T, m *Manager)) {
	forEachPathWith(t, nil, fn)
}

// forEachPathWith is forEachPath with base applied to every manager's config first.
func forEachPathWith(t *testing.T, base func(*Config), fn func(t *testing.T, m *Manager)) {
	for _, p := range []struct {
		name string
		mod  func(*Config)
	}{
		{"warm", func(*Config) {}},
		{"warm-on-demand", func(c *Config) { c.SpareRoots = -1 }},
		{"cold", func(c *Config) { c.NoZygotes = true }},
	} {
		t.Run(p.name, func(t *testing.T) {
			fn(t, newTestManager(t, func(c *Config) {
				if base != nil {
					base(c)
				}
				p.mod(c)
			}))
		})
	}
}

func TestIsolation(t *testing.T) {
	forEachPath(t, func(t *testing.T, m *Manager) {
		register(t, m, "iso", nil)

		out, _ := invoke(t, m, "iso", map[string]any{"op": "whoami"})
		if out["pid"] != 1.0 {
			t.Errorf("handler pid %v, want 1 (own PID namespace)", out["pid"])
		}
		if out["uid"] != float64(nobody) {
			t.Errorf("handler uid %v, want nobody", out["uid"])
		}
		if host, _ := os.Hostname(); out["hostname"] == host {
			t.Errorf("handler sees the host's hostname %q (no UTS namespace)", host)
		}

		out, _ = invoke(t, m, "iso", map[string]any{"op": "devices"})
		if out["full"] != "EACCES" {
			t.Errorf("opening the image's own /dev/full: %v, want EACCES (nodev)", out["full"])
		}

		out, _ = invoke(t, m, "iso", map[string]any{"op": "kill", "pid": os.Getpid()})
		if out["errno"] != "ESRCH" {
			t.Errorf("signalling the host's test process: %v, want ESRCH", out["errno"])
		}

		for _, path := range []string{"/etc/passwd", "/usr/new-file", "/srv/main.py"} {
			out, _ = invoke(t, m, "iso", map[string]any{"op": "write", "path": path})
			if out["errno"] != "EROFS" {
				t.Errorf("writing %s: %v, want EROFS", path, out["errno"])
			}
		}
		out, _ = invoke(t, m, "iso", map[string]any{"op": "write", "path": "/tmp/scratch"})
		if out["errno"] != 0.0 {
			t.Errorf("writing the scratch dir: %v, want success", out["errno"])
		}

		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		out, _ = invoke(t, m, "iso", map[string]any{"op": "connect", "port": l.Addr().(*net.TCPAddr).Port})
		if out["errno"] == 0.0 {
			t.Errorf("sandbox reached the host's loopback listener")
		}
	})
}

func TestLimits(t *testing.T) {
	forEachPath(t, func(t *testing.T, m *Manager) {
		register(t, m, "lim", func(f *Function) { f.MemoryMB = 64; f.Pids = 8; f.CPUs = 0.2 })

		_, err := m.Invoke(context.Background(), "lim", json.RawMessage(`{"op":"alloc","mb":256}`))
		if !errors.Is(err, ErrCrashed) {
			t.Fatalf("allocating 256 MB under a 64 MB limit: %v, want ErrCrashed", err)
		}
		if got := err.Error(); !strings.Contains(got, "memory limit") {
			t.Errorf("error does not name the memory limit: %v", err)
		}
		out, _ := invoke(t, m, "lim", map[string]any{"op": "alloc", "mb": 16})
		if out["allocated_mb"] != 16.0 {
			t.Errorf("16 MB under the limit: %v", out)
		}

		// CFS quota of 20 ms per 100 ms period; a little slack for the period boundaries.
		out, _ = invoke(t, m, "lim", map[string]any{"op": "burn", "seconds": 0.6})
		if share := out["cpu_share"].(float64); share > 0.3 {
			t.Errorf("handler got %.2f of a CPU under a 0.2 CPU limit", share)
		}

		out, _ = invoke(t, m, "lim", map[string]any{"op": "fork", "n": 50})
		if out["errno"] != "EAGAIN" || out["forked"].(float64) >= 8 {
			t.Errorf("forking 50 under pids.max 8: %v, want EAGAIN before 8", out)
		}
	})
}

func TestFailingHandlersKeepServerServing(t *testing.T) {
	forEachPath(t, func(t *testing.T, m *Manager) {
		register(t, m, "bad", func(f *Function) { f.Timeout = 500 * time.Millisecond })
		cases := []struct {
			event string
			want  error
		}{
			{`{"op":"crash"}`, ErrCrashed},
			{`{"op":"loop"}`, ErrTimeout},
			{`{"op":"nope"}`, ErrHandler},
		}
		for _, c := range cases {
			if _, err := m.Invoke(context.Background(), "bad", json.RawMessage(c.event)); !errors.Is(err, c.want) {
				t.Errorf("%s: %v, want %v", c.event, err, c.want)
			}
			out, res := invoke(t, m, "bad", map[string]any{"op": "echo", "value": c.event})
			if out["echo"] != c.event {
				t.Errorf("after %s: echo %v", c.event, out)
			}
			// A dead or killed sandbox is replaced; one whose handler raised is reused.
			if wantHot := c.want == ErrHandler; (res.Path == sandboxapi.Hot) != wantHot {
				t.Errorf("after %s: next call took the %s path", c.event, res.Path)
			}
		}
		st, _ := m.Stats("bad")
		if st.Errors != 3 || st.Invocations != 6 {
			t.Errorf("stats %+v, want 3 errors in 6 invocations", st)
		}
	})
}

func TestConcurrentInvocations(t *testing.T) {
	m := newTestManager(t, nil)
	register(t, m, "conc", nil)
	const workers, calls = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*calls)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < calls; i++ {
				want := fmt.Sprintf("%d-%d", w, i)
				res, err := m.Invoke(context.Background(), "conc", json.RawMessage(fmt.Sprintf(`{"op":"echo","value":%q}`, want)))
				if err != nil {
					errs <- err
					continue
				}
				var out map[string]string
				json.Unmarshal(res.Output, &out)
				if out["echo"] != want {
					errs <- fmt.Errorf("got %v, want %s (responses crossed)", out, want)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st, _ := m.Stats("conc")
	if st.Invocations != workers*calls || st.Busy != 0 || st.Idle > workers {
		t.Errorf("stats %+v", st)
	}
}

func TestKeepAliveExpiresIdleSandboxes(t *testing.T) {
	// No spare sandboxes: they hold cgroups too, and this test counts the pool's.
	m := newTestManager(t, func(c *Config) { c.KeepAlive = 100 * time.Millisecond; c.SpareRoots = -1 })
	register(t, m, "ka", nil)
	free := m.pool.Free() // the zygotes hold one
	invoke(t, m, "ka", map[string]any{"op": "echo"})
	if st, _ := m.Stats("ka"); st.Idle != 1 {
		t.Fatalf("idle after a call = %d, want 1", st.Idle)
	}
	deadline := time.Now().Add(5 * time.Second)
	// Expiry takes the sandbox out of the cache, then destroys it and returns its cgroup.
	for {
		st, _ := m.Stats("ka")
		if st.Idle == 0 && m.pool.Free() == free {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the keep-alive: %d idle sandboxes, %d of %d cgroups back in the pool", st.Idle, m.pool.Free(), free)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if pids := runnerPids(t, m, true); len(pids) > 0 {
		t.Errorf("expired sandbox's processes still alive: %v", pids)
	}
	if _, res := invoke(t, m, "ka", map[string]any{"op": "echo"}); res.Path != sandboxapi.Warm {
		t.Errorf("call after expiry took the %s path, want warm", res.Path)
	}
}

func TestDeleteRemovesSandboxes(t *testing.T) {
	m := newTestManager(t, nil)
	register(t, m, "del", func(f *Function) { f.Imports = []string{"decimal"} })
	invoke(t, m, "del", map[string]any{"op": "echo"})
	if len(runnerPids(t, m, true)) == 0 {
		t.Fatal("no cached sandbox process found before delete")
	}
	if _, err := m.Delete("del"); err != nil {
		t.Fatal(err)
	}
	if pids := runnerPids(t, m, false); len(pids) > 0 {
		t.Errorf("processes left after deleting the only function: %v", pids)
	}
	if _, err := m.Invoke(context.Background(), "del", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("invoking a deleted function: %v", err)
	}
}

func TestNoPrivileges(t *testing.T) {
	forEachPath(t, func(t *testing.T, m *Manager) {
		register(t, m, "priv", nil)
		out, _ := invoke(t, m, "priv", map[string]any{"op": "privileged"})
		if out["errno"] != "EPERM" {
			t.Errorf("sethostname from the handler: %v, want EPERM (no CAP_SYS_ADMIN)", out["errno"])
		}
	})
}

func TestZygoteTreeAndInstallCache(t *testing.T) {
	pkgs := t.TempDir()
	os.Chmod(pkgs, 0o755)
	if err := os.MkdirAll(filepath.Join(pkgs, "greeting"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pkgs, "greeting", "greetmod.py"), []byte("VALUE = 'from the install cache'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := newTestManager(t, func(c *Config) { c.PackagesDir = pkgs })
	register(t, m, "tree", func(f *Function) { f.Imports = []string{"decimal"}; f.Packages = []string{"greeting"} })
	register(t, m, "plain", nil)

	names := map[string]any{"op": "modules", "names": []string{"decimal", "fractions"}}
	out, res := invoke(t, m, "tree", names)
	if res.Path != sandboxapi.Warm || out["decimal"] != true || out["fractions"] != false {
		t.Errorf("function zygote: path %s, modules %v; want decimal preloaded by its zygote, fractions not", res.Path, out)
	}
	out, _ = invoke(t, m, "plain", names)
	if out["decimal"] != false {
		t.Errorf("a function without imports sees decimal preloaded: %v", out)
	}
	out, _ = invoke(t, m, "tree", map[string]any{"op": "import", "module": "greetmod"})
	if out["value"] != "from the install cache" {
		t.Errorf("install cache package: %v", out)
	}
	out, _ = invoke(t, m, "tree", map[string]any{"op": "write", "path": "/opt/greeting/x"})
	if out["errno"] != "EROFS" {
		t.Errorf("writing the install cache: %v, want EROFS", out["errno"])
	}
	err := m.Register(context.Background(), Function{Name: "missing", Image: "python3-bookworm", Entry: "main.handler", Dir: pkgs, Packages: []string{"nope"}})
	if err == nil {
		t.Error("registering with a package missing from the install cache succeeded")
	}
}

func TestRegisterRefusesBrokenCode(t *testing.T) {
	m := newTestManager(t, nil)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "main.py"), []byte("def handler(event):\n    return {\n"), 0o644)
	err := m.Register(context.Background(), Function{Name: "broken", Image: "python3-bookworm", Entry: "main.handler", Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "SyntaxError") && !strings.Contains(err.Error(), "compile") {
		t.Fatalf("registering a handler with a syntax error: %v", err)
	}
	if len(m.Functions()) != 0 {
		t.Errorf("broken function listed: %v", m.Functions())
	}
	register(t, m, "broken", nil) // the name is free again
}

func TestDeadZygoteIsReplaced(t *testing.T) {
	// No handler cache: a frozen sandbox in the zygote's PID namespace would hold the dying
	// zygote until thawed.
	m := newTestManager(t, func(c *Config) { c.KeepAlive = 0 })
	register(t, m, "z", func(f *Function) { f.Imports = []string{"decimal"} })
	if _, res := invoke(t, m, "z", map[string]any{"op": "echo"}); res.Path != sandboxapi.Warm {
		t.Fatalf("first call path %s, want warm", res.Path)
	}
	zy := m.funcs["z"].image.zygote
	zy.cmd.Process.Kill()
	zy.cmd.Process.Wait()
	if _, res := invoke(t, m, "z", map[string]any{"op": "echo"}); res.Path != sandboxapi.Cold {
		t.Errorf("call after the zygote died took the %s path, want cold", res.Path)
	}
	out, res := invoke(t, m, "z", map[string]any{"op": "modules", "names": []string{"decimal"}})
	if res.Path != sandboxapi.Warm || out["decimal"] != true {
		t.Errorf("call after the restart: path %s, modules %v; want warm from a new function zygote", res.Path, out)
	}
}

func TestHandlerImportErrorFailsTheStart(t *testing.T) {
	forEachPath(t, func(t *testing.T, m *Manager) {
		dir := t.TempDir()
		os.Chmod(dir, 0o755)
		if err := os.WriteFile(filepath.Join(dir, "main.py"), []byte("raise RuntimeError('import boom')\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		register(t, m, "boom", func(f *Function) { f.Dir = dir })
		for i := 0; i < 3; i++ { // spares, then sandboxes started on demand
			_, err := m.Invoke(context.Background(), "boom", json.RawMessage(`{}`))
			if !errors.Is(err, ErrHandler) || !strings.Contains(err.Error(), "import boom") {
				t.Fatalf("call %d: %v, want ErrHandler with the import's traceback", i, err)
			}
		}
		if st, _ := m.Stats("boom"); st.Errors != 3 || st.Idle != 0 {
			t.Errorf("stats %+v, want 3 errors and no cached sandbox", st)
		}
	})
}
