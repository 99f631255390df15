package sandbox

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// waitCheckpoint waits until fn's checkpoint is made and fails the test if it was not.
func waitCheckpoint(t testing.TB, m *Manager, name string) {
	t.Helper()
	m.mu.Lock()
	c := m.funcs[name].ckpt
	m.mu.Unlock()
	select {
	case <-c.ready:
	case <-time.After(2 * time.Minute):
		t.Fatal("no checkpoint after 2 minutes")
	}
	if c.err != nil {
		t.Fatal(c.err)
	}
}

// TestRestoreStartPath: a function registered with Checkpoint is checkpointed once its
// handler is imported; with no zygote its starts restore that checkpoint (the handler
// module ran before the invocation, at checkpoint time), in the sandbox's cgroup, as
// confined as a cold sandbox (nobody, no capabilities, no_new_privs, seccomp, rlimits, PID 1
// of its own namespace, nothing of the host's reachable); the restored sandbox is cached and
// thawed as any other.
func TestRestoreStartPath(t *testing.T) {
	requireAmd64(t)
	criu := testenv.NeedCRIU(t)
	secret := hostFile(t)
	// The restore reads the checkpoint and binds the code as the sandboxes' user namespace:
	// their paths must be searchable.
	m := newTestManager(t, func(c *Config) { c.NoZygotes, c.CRIU, c.StateDir = true, criu, testenv.SearchableDir(t) })
	register(t, m, "ck", func(f *Function) { f.Checkpoint, f.Imports = true, []string{"json"} })
	waitCheckpoint(t, m, "ck")

	before := float64(time.Now().UnixNano()) / 1e9
	out, res := invoke(t, m, "ck", map[string]any{"op": "imported_at"})
	if res.Path != sandboxapi.Restored {
		t.Fatalf("start path %s, want restored", res.Path)
	}
	if at := out["imported_at"].(float64); at >= before {
		t.Errorf("handler module ran at the invocation (%.3f ≥ %.3f), not at checkpoint time", at, before)
	}
	out, res = invoke(t, m, "ck", map[string]any{"op": "whoami"})
	if res.Path != sandboxapi.Hot || out["pid"] != 1.0 || out["uid"] != float64(nobody) || out["cwd"] != "/srv" {
		t.Errorf("second call: path %s, %v; want hot, PID 1, nobody, in /srv", res.Path, out)
	}
	checkSandboxCreds(t, "restored sandbox", m, "ck")
	pids := runnerPids(t, m, true)
	if len(pids) != 1 {
		t.Fatalf("sandbox processes %v, want the restored one", pids)
	}
	if cg, _ := os.ReadFile("/proc/" + pids[0] + "/cgroup"); !strings.Contains(string(cg), m.poolName) {
		t.Errorf("restored sandbox is not in a cgroup of the pool:\n%s", cg)
	}
	// Its root and binds read-only, nosuid and nodev (an image's device nodes do not open),
	// besides its own /proc.
	mi, err := os.ReadFile("/proc/" + pids[0] + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(mi)), "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] != "/proc" && !strings.HasPrefix(f[5], "ro,nosuid,nodev") {
			t.Errorf("restored sandbox's mount %s: %s, want ro,nosuid,nodev", f[4], f[5])
		}
	}
	escape, _ := invoke(t, m, "ck", map[string]any{"op": "escape", "paths": []string{secret}})
	checkDenied(t, "restored handler", escape)
	for path, errno := range map[string]string{"/etc/passwd": "EROFS", "/srv/main.py": "EROFS"} {
		if out, _ := invoke(t, m, "ck", map[string]any{"op": "write", "path": path}); out["errno"] != errno {
			t.Errorf("writing %s: %v, want %s", path, out["errno"], errno)
		}
	}
	if out, _ := invoke(t, m, "ck", map[string]any{"op": "kill", "pid": os.Getpid()}); out["errno"] != "ESRCH" {
		t.Errorf("signalling the host's test process: %v, want ESRCH", out["errno"])
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if out, _ := invoke(t, m, "ck", map[string]any{"op": "connect", "port": l.Addr().(*net.TCPAddr).Port}); out["errno"] == 0.0 {
		t.Errorf("restored sandbox reached the host's loopback listener")
	}
	st, err := m.Stats("ck")
	if err != nil {
		t.Fatal(err)
	}
	if st.Restored != 1 || st.Cold != 0 || st.Errors != 0 {
		t.Errorf("stats %+v, want one restored start and no cold one", st)
	}
}

// TestStartsSurviveRetiredThreads: sandboxes start while the Go runtime retires the
// server's threads (a goroutine that ends locked to its thread takes the thread along, as
// convert's onOneCPU does while a checkpoint is pushed), and none is killed by its Pdeathsig,
// which follows the thread that forked it.
func TestStartsSurviveRetiredThreads(t *testing.T) {
	m := newTestManager(t, func(c *Config) { c.NoZygotes, c.KeepAlive = true, 0 })
	register(t, m, "fn", nil)
	stop := make(chan struct{})
	retired := make(chan struct{})
	go func() {
		defer close(retired)
		for {
			select {
			case <-stop:
				return
			default:
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
			}()
			<-done
		}
	}()
	defer func() { close(stop); <-retired }()
	for i := 0; i < 30; i++ {
		if _, err := m.Invoke(context.Background(), "fn", json.RawMessage(`{"op": "echo"}`)); err != nil {
			t.Fatalf("start %d while threads are retired: %v", i, err)
		}
	}
}
