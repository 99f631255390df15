package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	cseccomp "github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/sandbox/sandboxapi"
	"github.com/opencontainers/runtime-spec/specs-go"
)

// benchHandler is the handler every start path is measured with: it imports json and sqlite3
// and returns.
const benchHandler = `import json, sqlite3
def handler(event):
    return {"ok": True}
`

func benchHandlerDir(b *testing.B) string {
	dir := b.TempDir()
	os.Chmod(dir, 0o755)
	if err := os.WriteFile(filepath.Join(dir, "main.py"), []byte(benchHandler), 0o644); err != nil {
		b.Fatal(err)
	}
	return dir
}

// latencies is a sample of durations.
type latencies []time.Duration

func (l latencies) pct(p float64) time.Duration {
	s := slices.Clone(l)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// arrivalGap is the idle time between two timed starts of one path: requests arrive one at a
// time, 10 ms apart after the previous one ended, so every path (runc too) is measured below
// saturation and a sandbox's background work (destroying the last one, preparing spares) is
// not charged to the next start. The back-to-back row and the sustained rate show saturation.
const arrivalGap = 10 * time.Millisecond

// measureInvoke times n invocations of fn (the full call: start + handler + reply), gap
// apart.
func measureInvoke(b *testing.B, m *Manager, fn string, n int, want sandboxapi.StartPath, gap time.Duration) latencies {
	var out latencies
	for i := 0; i < n; i++ {
		time.Sleep(gap)
		t0 := time.Now()
		res, err := m.Invoke(context.Background(), fn, json.RawMessage(`{}`))
		d := time.Since(t0)
		if err != nil {
			b.Fatal(err)
		}
		if res.Path != want {
			b.Fatalf("invocation took the %s path, want %s", res.Path, want)
		}
		out = append(out, d)
	}
	return out
}

func benchManager(b *testing.B, mod func(*Config)) *Manager {
	return benchManagerOn(b, DirProvider{Root: testRootfs(b)}, "python3-bookworm", mod)
}

// benchManagerOn is benchManager on image ref of rootfs.
func benchManagerOn(b *testing.B, rootfs RootfsProvider, ref string, mod func(*Config)) *Manager {
	return benchFunction(b, rootfs, ref, benchHandler, mod, nil)
}

// benchFunction is a manager on image ref of rootfs with function "bench" registered: code
// as its main.py, fmod applied to it. A function with Checkpoint has its checkpoint made
// before it returns.
func benchFunction(b *testing.B, rootfs RootfsProvider, ref, code string, mod func(*Config), fmod func(*Function)) *Manager {
	// Searchable dirs: restores read the checkpoint and bind the code as the sandboxes' user
	// namespace.
	cfg := Config{StateDir: testenv.SearchableDir(b), Rootfs: rootfs, PoolSize: 16}
	if mod != nil {
		mod(&cfg)
	}
	m, err := NewManager(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	dir := testenv.SearchableDir(b)
	os.Chmod(dir, 0o755)
	if err := os.WriteFile(filepath.Join(dir, "main.py"), []byte(code), 0o644); err != nil {
		b.Fatal(err)
	}
	f := Function{Name: "bench", Image: ref, Entry: "main.handler", Dir: dir, MemoryMB: 256, Timeout: 30 * time.Second}
	if fmod != nil {
		fmod(&f)
	}
	if err := m.Register(context.Background(), f); err != nil {
		b.Fatal(err)
	}
	if f.Checkpoint {
		waitCheckpoint(b, m, f.Name)
	}
	return m
}

// restoreRun is the restore start path against the cold one for one handler, measured
// through the manager in one run.
type restoreRun struct {
	name           string
	cold, restored latencies
}

// restoreStarts measures, for the bench handler and for initheavy.py (the initialization a
// checkpoint saves), n cold starts and n restored starts of the same function on image ref of
// rootfs (no zygotes, no handler cache: every call a start).
func restoreStarts(b *testing.B, rootfs RootfsProvider, ref string, n int) []restoreRun {
	criu := testenv.NeedCRIU(b)
	heavy, err := os.ReadFile("testdata/initheavy.py")
	if err != nil {
		b.Fatal(err)
	}
	var runs []restoreRun
	for _, h := range []struct{ name, code string }{{"bench handler (json, sqlite3)", benchHandler}, {"initheavy.py (20 imports, a sqlite table)", string(heavy)}} {
		noZygotes := func(c *Config) { c.NoZygotes, c.CRIU = true, criu }
		coldM := benchFunction(b, rootfs, ref, h.code, noZygotes, nil)
		measureInvoke(b, coldM, "bench", 1, sandboxapi.Cold, arrivalGap)
		cold := measureInvoke(b, coldM, "bench", n, sandboxapi.Cold, arrivalGap)
		restoreM := benchFunction(b, rootfs, ref, h.code, noZygotes, func(f *Function) { f.Checkpoint = true })
		measureInvoke(b, restoreM, "bench", 1, sandboxapi.Restored, arrivalGap)
		restored := measureInvoke(b, restoreM, "bench", n, sandboxapi.Restored, arrivalGap)
		runs = append(runs, restoreRun{name: h.name, cold: cold, restored: restored})
	}
	return runs
}

// runcBaseline times `runc run` of python3 importing json and sqlite3 in the same rootfs, with
// the same namespaces plus the mount and network namespaces runc always makes, and what
// containerd gives a container by default: its capabilities and its seccomp profile (the
// profile the sandboxes' filters derive from): the fair peer.
func runcBaseline(b *testing.B, rootfs string, n int) (latencies, error) {
	runc, err := exec.LookPath("runc")
	if err != nil {
		return nil, fmt.Errorf("runc not installed: %w", err)
	}
	bundle := b.TempDir()
	cfg := map[string]any{
		"ociVersion": "1.0.2",
		"process": map[string]any{
			"user": map[string]int{"uid": nobody, "gid": nobody},
			"args": []string{"/usr/bin/python3", "-I", "-c", "import json, sqlite3; print(json.dumps({'ok': True}))"},
			"env":  []string{"PATH=/usr/bin:/bin"}, "cwd": "/", "noNewPrivileges": true,
			"capabilities": map[string][]string{"bounding": defaultCaps, "effective": defaultCaps, "permitted": defaultCaps},
		},
		"root":     map[string]any{"path": rootfs, "readonly": true},
		"hostname": "runc",
		// runc's usual mounts; /dev on a tmpfs so runc makes its device nodes there and never
		// writes into the shared rootfs.
		"mounts": []map[string]any{
			{"destination": "/proc", "type": "proc", "source": "proc"},
			{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": []string{"nosuid", "nodev"}},
		},
		"linux": map[string]any{
			"namespaces": []map[string]string{{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}},
			"resources":  map[string]any{"memory": map[string]int64{"limit": 128 << 20}, "pids": map[string]int64{"limit": 32}},
			"seccomp":    cseccomp.DefaultProfile(&specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{Bounding: defaultCaps}}}),
		},
	}
	js, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), js, 0o644); err != nil {
		return nil, err
	}
	root := filepath.Join(bundle, "state")
	var out latencies
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("obd-bench-%d-%d", os.Getpid(), i)
		time.Sleep(arrivalGap)
		t0 := time.Now()
		cmd := exec.Command(runc, "--root", root, "run", "--bundle", bundle, id)
		res, err := cmd.CombinedOutput()
		d := time.Since(t0)
		if err != nil {
			exec.Command(runc, "--root", root, "delete", "-f", id).Run()
			return nil, fmt.Errorf("runc run: %v: %s", err, res)
		}
		out = append(out, d)
	}
	return out, nil
}

// defaultCaps are the capabilities containerd gives a container by default.
var defaultCaps = []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
	"CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"}

// nerdctlBaseline times `nerdctl run --rm --net none` of python3 importing json and sqlite3 on
// a copy of the same rootfs (--rootfs: the exploded image; nerdctl may write into it), against
// a private containerd. It needs containerd and nerdctl under OBD_DEPS (make deps).
func nerdctlBaseline(b *testing.B, rootfs string, n int) (latencies, error) {
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "nerdctl"} {
		if _, err := os.Stat(filepath.Join(testenv.DepsDir(), "bin", bin)); err != nil {
			return nil, fmt.Errorf("%s not installed under %s (make deps)", bin, testenv.DepsDir())
		}
	}
	c := testenv.StartContainerd(b, testenv.ContainerdOptions{})
	copyDir := filepath.Join(b.TempDir(), "rootfs")
	if out, err := exec.Command("cp", "-a", rootfs, copyDir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copy rootfs: %v: %s", err, out)
	}
	args := []string{"run", "--rm", "--net", "none", "--rootfs", copyDir, "/usr/bin/python3", "-I", "-c", "import json, sqlite3"}
	var out latencies
	for i := 0; i <= n; i++ {
		time.Sleep(arrivalGap)
		t0 := time.Now()
		if _, err := c.TryNerdctl(args...); err != nil {
			return nil, err
		}
		if i > 0 { // the first run pays containerd's one-time setup
			out = append(out, time.Since(t0))
		}
	}
	return out, nil
}

// throughput runs total zygote-path starts (no handler cache: every invocation forks a new
// sandbox and destroys it) from workers goroutines and returns starts per second.
func throughput(b *testing.B, m *Manager, workers, total int) float64 {
	var wg sync.WaitGroup
	next := make(chan struct{}, total)
	for i := 0; i < total; i++ {
		next <- struct{}{}
	}
	close(next)
	t0 := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				if _, err := m.Invoke(context.Background(), "bench", json.RawMessage(`{}`)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return float64(total) / time.Since(t0).Seconds()
}

// RegistryImage, set by the external test package (bench_registry_test.go, which may import
// sandbox/bddrootfs), pushes the python image to a registry as an obd image and returns a bdd
// rootfs provider and the image's reference: the start paths are measured on it too.
var RegistryImage func(b *testing.B) (RootfsProvider, string)

// CheckpointRun is one handler's checkpoint/restore measurement: n cold starts of it against
// n restores of its checkpoint (eager, and lazy where possible: nil otherwise) through bdd, and
// the first restore (find, attach, mount, restore, first answer) on a bdd cache without the
// checkpoint.
type CheckpointRun struct {
	Name, Metric string // row label, metric prefix
	First        time.Duration
	Cold, Eager  []time.Duration
	Lazy         []time.Duration
}

// CheckpointStarts, set by bench_registry_test.go, checkpoints package checkpoint's handler
// (unconfined, and confined on the image as a sandbox is) into the registry as obd layer
// artifacts of the image and measures each in one run, n starts gap apart.
var CheckpointStarts func(b *testing.B, n int, gap time.Duration) []CheckpointRun

// registryPaths measures the cold, warm and hot paths on the obd image by reference: register
// (resolve, attach, mount, runtime zygote) on a bdd that never read the image, its first
// start, then the paths as on the local rootfs.
func registryPaths(b *testing.B, coldN, warmN, hotN int) (first, cold, warm, hot, restored latencies) {
	rootfs, ref := RegistryImage(b)
	t0 := time.Now()
	firstM := benchManagerOn(b, rootfs, ref, func(c *Config) { c.NoZygotes = true })
	measureInvoke(b, firstM, "bench", 1, sandboxapi.Cold, 0)
	first = latencies{time.Since(t0)}
	cold = measureInvoke(b, firstM, "bench", coldN, sandboxapi.Cold, arrivalGap)
	warmM := benchManagerOn(b, rootfs, ref, nil)
	measureInvoke(b, warmM, "bench", 5, sandboxapi.Warm, arrivalGap)
	warm = measureInvoke(b, warmM, "bench", warmN, sandboxapi.Warm, arrivalGap)
	hotM := benchManagerOn(b, rootfs, ref, func(c *Config) { c.KeepAlive = time.Hour })
	measureInvoke(b, hotM, "bench", 1, sandboxapi.Warm, arrivalGap)
	hot = measureInvoke(b, hotM, "bench", hotN, sandboxapi.Hot, arrivalGap)
	criu := testenv.NeedCRIU(b)
	restoreM := benchFunction(b, rootfs, ref, benchHandler, func(c *Config) { c.NoZygotes, c.CRIU = true, criu },
		func(f *Function) { f.Checkpoint = true })
	measureInvoke(b, restoreM, "bench", 1, sandboxapi.Restored, arrivalGap)
	restored = measureInvoke(b, restoreM, "bench", coldN, sandboxapi.Restored, arrivalGap)
	return first, cold, warm, hot, restored
}

// BenchmarkStartPaths measures, in one run, the start latency of the cold, warm (zygote) and
// hot (handler cache) paths and of `runc run` on the same rootfs, the sustained zygote-path
// start rate, and the network namespace choice, and reports the ratios the design targets:
// warm ≥ 20× faster than runc, hot p50 ≤ 2 ms, ≥ 200 starts/s on 2 cores.
// Every path's latency runs from the request to the handler's result, requests arriving one
// at a time arrivalGap apart. Warm is also measured with no spares (every sandbox forked on
// demand) and back to back (no gap: spares run out, and destroying the previous sandbox
// overlaps the next start); hot also back to back (an idle vCPU wakes slower, so the gap costs
// it).
// nerdctl run is measured too when containerd and nerdctl are installed (make deps).
// Run with -benchtime 1x (make bench-sandbox); each pass takes the full sample.
func BenchmarkStartPaths(b *testing.B) {
	const coldN, warmN, hotN, runcN, nerdctlN, rateN, restoreN = 30, 200, 500, 20, 10, 1000, 10
	rootfs := filepath.Join(testRootfs(b), "python3-bookworm")
	for i := 0; i < b.N; i++ {
		cold := measureInvoke(b, benchManager(b, func(c *Config) { c.NoZygotes = true }), "bench", coldN, sandboxapi.Cold, arrivalGap)
		warmM := benchManager(b, nil)
		measureInvoke(b, warmM, "bench", 5, sandboxapi.Warm, arrivalGap) // page in the zygote
		warm := measureInvoke(b, warmM, "bench", warmN, sandboxapi.Warm, arrivalGap)
		warmB2B := measureInvoke(b, warmM, "bench", warmN, sandboxapi.Warm, 0)
		rate := throughput(b, warmM, 4, rateN)
		onDemandM := benchManager(b, func(c *Config) { c.SpareRoots = -1 })
		measureInvoke(b, onDemandM, "bench", 5, sandboxapi.Warm, arrivalGap)
		onDemand := measureInvoke(b, onDemandM, "bench", warmN, sandboxapi.Warm, arrivalGap)
		hotM := benchManager(b, func(c *Config) { c.KeepAlive = time.Hour })
		measureInvoke(b, hotM, "bench", 1, sandboxapi.Warm, arrivalGap)
		hot := measureInvoke(b, hotM, "bench", hotN, sandboxapi.Hot, arrivalGap)
		hotB2B := measureInvoke(b, hotM, "bench", hotN, sandboxapi.Hot, 0)
		var regFirst, regCold, regWarm, regHot, regRestored latencies
		if RegistryImage != nil {
			regFirst, regCold, regWarm, regHot, regRestored = registryPaths(b, coldN, warmN, hotN)
		}
		restores := restoreStarts(b, DirProvider{Root: testRootfs(b)}, "python3-bookworm", restoreN)
		var ckRuns []CheckpointRun
		if CheckpointStarts != nil {
			ckRuns = CheckpointStarts(b, restoreN, arrivalGap)
		}
		runc, runcErr := runcBaseline(b, rootfs, runcN)
		nerdctl, nerdctlErr := nerdctlBaseline(b, rootfs, nerdctlN)

		fmt.Printf("\nstart latency (handler imports json, sqlite3; full invocation; one at a time, %v apart)\n", arrivalGap)
		fmt.Printf("  %-22s %9s %9s %6s\n", "path", "p50 ms", "p99 ms", "n")
		row := func(name string, l latencies) {
			fmt.Printf("  %-22s %9.3f %9.3f %6d\n", name, ms(l.pct(0.5)), ms(l.pct(0.99)), len(l))
		}
		row("cold (new python3)", cold)
		row("warm (zygote fork)", warm)
		row("  forked on demand", onDemand)
		row("  back-to-back", warmB2B)
		row("hot (handler cache)", hot)
		row("  back-to-back", hotB2B)
		if regFirst != nil {
			fmt.Printf("  obd image by reference (registry, bdd, start trace replayed):\n")
			row("  first (register+start)", regFirst)
			row("  cold", regCold)
			row("  warm", regWarm)
			row("  hot", regHot)
			row("  restored (CRIU)", regRestored)
		}
		for _, r := range restores {
			fmt.Printf("  restored from the function's checkpoint (manager, no zygote), %s:\n", r.name)
			row("  cold (new python3)", r.cold)
			row("  restored (CRIU)", r.restored)
			fmt.Printf("    cold / restored: %.1fx\n", float64(r.cold.pct(0.5))/float64(r.restored.pct(0.5)))
		}
		for _, r := range ckRuns {
			fmt.Printf("  checkpoint/restore, %s (handler: 20 imports, a sqlite table; checkpoint an obd layer artifact via bdd):\n", r.Name)
			row("  cold (new python3)", r.Cold)
			row("  restore", r.Eager)
			if r.Lazy != nil {
				row("  lazy restore (uffd)", r.Lazy)
			} else {
				fmt.Printf("    lazy restore: refused (vm.unprivileged_userfaultfd = 0)\n")
			}
			row("  first (attach+restore)", latencies{r.First})
		}
		if runcErr == nil {
			row("runc run", runc)
		} else {
			fmt.Printf("  runc run: skipped: %v\n", runcErr)
		}
		if nerdctlErr == nil {
			row("nerdctl run --rootfs", nerdctl)
		} else {
			fmt.Printf("  nerdctl run: skipped: %v\n", nerdctlErr)
		}
		fmt.Printf("zygote path sustained: %.0f starts/s (4 workers, %d starts, create+invoke+destroy)\n", rate, rateN)

		b.ReportMetric(ms(cold.pct(0.5)), "cold-p50-ms")
		b.ReportMetric(ms(warm.pct(0.5)), "warm-p50-ms")
		b.ReportMetric(ms(warm.pct(0.99)), "warm-p99-ms")
		b.ReportMetric(ms(onDemand.pct(0.5)), "warm-on-demand-p50-ms")
		b.ReportMetric(ms(warmB2B.pct(0.5)), "warm-back-to-back-p50-ms")
		b.ReportMetric(ms(hot.pct(0.5)), "hot-p50-ms")
		b.ReportMetric(ms(hot.pct(0.99)), "hot-p99-ms")
		b.ReportMetric(ms(hotB2B.pct(0.5)), "hot-back-to-back-p50-ms")
		b.ReportMetric(float64(cold.pct(0.5))/float64(warm.pct(0.5)), "cold/warm-x")
		b.ReportMetric(rate, "zygote-starts/s")
		if regFirst != nil {
			b.ReportMetric(ms(regFirst[0]), "ref-first-start-ms")
			b.ReportMetric(ms(regCold.pct(0.5)), "ref-cold-p50-ms")
			b.ReportMetric(ms(regWarm.pct(0.5)), "ref-warm-p50-ms")
			b.ReportMetric(ms(regHot.pct(0.5)), "ref-hot-p50-ms")
			b.ReportMetric(ms(regRestored.pct(0.5)), "ref-restored-p50-ms")
		}
		for i, r := range restores {
			metric := [...]string{"manager-", "manager-heavy-"}[i]
			b.ReportMetric(ms(r.cold.pct(0.5)), metric+"cold-p50-ms")
			b.ReportMetric(ms(r.restored.pct(0.5)), metric+"restored-p50-ms")
			b.ReportMetric(float64(r.cold.pct(0.5))/float64(r.restored.pct(0.5)), metric+"cold/restored-x")
		}
		for _, r := range ckRuns {
			cold, eager := latencies(r.Cold), latencies(r.Eager)
			b.ReportMetric(ms(cold.pct(0.5)), r.Metric+"ckpt-cold-p50-ms")
			b.ReportMetric(ms(eager.pct(0.5)), r.Metric+"restore-p50-ms")
			b.ReportMetric(ms(r.First), r.Metric+"first-restore-ms")
			b.ReportMetric(float64(cold.pct(0.5))/float64(eager.pct(0.5)), r.Metric+"cold/restore-x")
			if r.Lazy != nil {
				lazy := latencies(r.Lazy)
				b.ReportMetric(ms(lazy.pct(0.5)), r.Metric+"lazy-restore-p50-ms")
				b.ReportMetric(float64(cold.pct(0.5))/float64(lazy.pct(0.5)), r.Metric+"cold/lazy-restore-x")
			}
		}
		if runcErr == nil {
			b.ReportMetric(ms(runc.pct(0.5)), "runc-p50-ms")
			b.ReportMetric(float64(runc.pct(0.5))/float64(warm.pct(0.5)), "runc/warm-x")
			b.ReportMetric(float64(runc.pct(0.5))/float64(hot.pct(0.5)), "runc/hot-x")
		}
		if nerdctlErr == nil {
			b.ReportMetric(ms(nerdctl.pct(0.5)), "nerdctl-p50-ms")
			b.ReportMetric(float64(nerdctl.pct(0.5))/float64(warm.pct(0.5)), "nerdctl/warm-x")
		}
	}
}

// BenchmarkRestoreStarts measures only the restore start path against the cold one
// (restoreStarts), for a quicker look than BenchmarkStartPaths.
func BenchmarkRestoreStarts(b *testing.B) {
	for i := 0; i < b.N; i++ {
		for _, r := range restoreStarts(b, DirProvider{Root: testRootfs(b)}, "python3-bookworm", 10) {
			b.Logf("%s: cold p50 %.1f ms, restored p50 %.1f ms (p99 %.1f): %.1fx", r.name, ms(r.cold.pct(0.5)),
				ms(r.restored.pct(0.5)), ms(r.restored.pct(0.99)), float64(r.cold.pct(0.5))/float64(r.restored.pct(0.5)))
		}
	}
}
