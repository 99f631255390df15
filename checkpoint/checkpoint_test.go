package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/internal/ckpthandler"
	"github.com/obdproject/obd/internal/facility"
)

// python is the interpreter the test handler runs on: Debian's, as in the sandbox images.
const python = "/usr/bin/python3"

// needCRIU returns the installed criu; a machine without it, root or python3 skips the test
// with the reason (a failure under OBD_REQUIRE_E2E=1: `make deps` installs criu).
func needCRIU(tb testing.TB) *CRIU {
	tb.Helper()
	if testing.Short() {
		tb.Skip("checkpoint: runs criu; not in -short")
	}
	if os.Geteuid() != 0 {
		facility.Missing(tb, "checkpoint: criu dump/restore need root")
	}
	if _, err := os.Stat(python); err != nil {
		facility.Missing(tb, "checkpoint: test handler needs %s: %v", python, err)
	}
	c, err := Find()
	if err != nil {
		facility.Missing(tb, "checkpoint: %v", err)
	}
	return c
}

func handlerSpec(tb testing.TB) Spec {
	tb.Helper()
	script := ckpthandler.Script()
	return Spec{Path: python, Args: []string{"python3", "-I", script}, Dir: "/", Env: []string{"LANG=C.UTF-8"}}
}

type (
	client = ckpthandler.Client
	reply  = ckpthandler.Reply
)

func newClient(p *Process) *client { return ckpthandler.New(p.Stdin, p.Stdout, p.Stderr) }

// coldStart starts the handler, waits for it to be initialized and asks it one request.
func coldStart(tb testing.TB, spec Spec) (*Process, *client, reply) {
	tb.Helper()
	p, err := Start(spec)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	c := newClient(p)
	ready, err := c.Read()
	if err != nil || !ready.Ready {
		tb.Fatalf("cold start: %+v, %v", ready, err)
	}
	r, err := c.Ask(1)
	if err != nil {
		tb.Fatalf("cold start: %v", err)
	}
	return p, c, r
}

func restore(tb testing.TB, criu *CRIU, dir string, opts RestoreOptions) (*Process, *client) {
	tb.Helper()
	p, err := criu.Restore(criuCtx(tb), dir, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p, newClient(p)
}

// TestDumpRestore checkpoints an initialized handler and restores it three times, two at once
// and one lazily from a read-only mount: each restored process answers with the state the
// handler had when dumped.
func TestDumpRestore(t *testing.T) {
	criu := needCRIU(t)
	spec := handlerSpec(t)
	orig, origClient, first := coldStart(t, spec)
	if first.Served != 1 || first.Pid != 1 || first.V == "" {
		t.Fatalf("cold handler's first reply %+v: want served 1 by PID 1 of its namespace", first)
	}
	dir := filepath.Join(t.TempDir(), "img")
	if err := criu.Dump(criuCtx(t), orig, dir); err != nil {
		t.Fatal(err)
	}
	select {
	case <-orig.Exited():
	default:
		t.Fatal("the dumped handler still runs")
	}
	if _, err := origClient.Ask(2); err == nil {
		t.Fatal("the dumped handler still answers")
	}
	if err := criu.Dump(criuCtx(t), orig, dir); err == nil {
		t.Fatal("a second dump into the same dir succeeded")
	}

	var restored [2]*Process
	var clients [2]*client
	var wg sync.WaitGroup
	errs := make([]error, len(restored))
	for i := range restored {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := criu.Restore(criuCtx(t), dir, RestoreOptions{})
			if err != nil {
				errs[i] = err
				return
			}
			t.Cleanup(func() { p.Close() })
			restored[i], clients[i] = p, newClient(p)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent restores: %v", err)
	}
	if restored[0].Pid == restored[1].Pid {
		t.Fatalf("two restores share host PID %d", restored[0].Pid)
	}
	for i, c := range clients {
		for want := 2; want <= 3; want++ {
			r, err := c.Ask(100 + want)
			if err != nil {
				t.Fatalf("restore %d: %v", i, err)
			}
			// served counts on from the dumped state: 1 before the dump.
			if r.Served != want || r.Pid != 1 || r.V == "" {
				t.Fatalf("restore %d: reply %+v, want served %d by PID 1", i, r, want)
			}
		}
	}

	// A checkpoint stored as an image layer is mounted read-only: restore from such a mount.
	ro := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(ro, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dir, ro, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(ro, unix.MNT_DETACH) })
	if err := unix.Mount("", ro, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	lazyP, lazyC := restore(t, criu, ro, RestoreOptions{LazyPages: true})
	r, err := lazyC.Ask(19999)
	if err != nil {
		t.Fatalf("lazy restore: %v", err)
	}
	if r.Served != 2 || r.Pid != 1 || r.V == "" {
		t.Fatalf("lazy restore: reply %+v, want served 2 by PID 1", r)
	}

	// Closing ends the process and, for a restore, removes its work dir.
	for _, p := range append(restored[:], lazyP) {
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range append(restored[:], lazyP) {
		if _, err := os.Stat(p.work); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("restore work dir %q: %v after Close, want it removed", p.work, err)
		}
	}
}

// TestRestoreBadImage: a directory that is not a checkpoint, or whose record is damaged, fails
// with ErrBadImage before criu runs.
func TestRestoreBadImage(t *testing.T) {
	c := &CRIU{Path: "/nonexistent/criu", Version: "4.1.1"}
	cases := map[string]string{
		"no record":   "",
		"not json":    "{",
		"old version": `{"version": 0, "criu": "4.1.1", "stdio": ["pipe:[1]", "pipe:[2]", "pipe:[3]"]}`,
		"not a pipe":  `{"version": 1, "criu": "4.1.1", "stdio": ["pipe:[1]", "/etc/passwd", "pipe:[3]"]}`,
		"option":      `{"version": 1, "criu": "4.1.1", "stdio": ["pipe:[1] --action-script x", "pipe:[2]", "pipe:[3]"]}`,
		"unknown key": `{"version": 1, "criu": "4.1.1", "stdio": ["pipe:[1]", "pipe:[2]", "pipe:[3]"], "x": 1}`,
		"trailing":    `{"version": 1, "criu": "4.1.1", "stdio": ["pipe:[1]", "pipe:[2]", "pipe:[3]"]} {}`,
		"huge":        `{"version": 1, "criu": "` + strings.Repeat("x", maxMetaSize) + `"}`,
		// Bind targets go on criu's command line as external mount keys.
		"binds unconfined": `{"version": 1, "stdio": ["pipe:[1]", "pipe:[2]", "pipe:[3]"], "binds": ["/srv"]}`,
		"bind syntax":      `{"version": 1, "stdio": ["pipe:[1]", "pipe:[2]", "pipe:[3]"], "uid_base": 100000, "binds": ["/srv]:x"]}`,
		"bind relative":    `{"version": 1, "stdio": ["pipe:[1]", "pipe:[2]", "pipe:[3]"], "uid_base": 100000, "binds": ["../etc"]}`,
		"bind proc":        `{"version": 1, "stdio": ["pipe:[1]", "pipe:[2]", "pipe:[3]"], "uid_base": 100000, "binds": ["/proc/1"]}`,
		"bind twice":       `{"version": 1, "stdio": ["pipe:[1]", "pipe:[2]", "pipe:[3]"], "uid_base": 100000, "binds": ["/srv", "/srv"]}`,
		"many binds":       `{"version": 1, "stdio": ["pipe:[1]", "pipe:[2]", "pipe:[3]"], "uid_base": 100000, "binds": [` + strings.TrimSuffix(strings.Repeat(`"/srv",`, maxBinds+1), ",") + `]}`,
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if content != "" {
				if err := os.WriteFile(filepath.Join(dir, MetaFile), []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := c.Restore(criuCtx(t), dir, RestoreOptions{})
			if !errors.Is(err, ErrBadImage) {
				t.Fatalf("Restore: %v, want ErrBadImage", err)
			}
		})
	}
}

func TestNewRejectsOldCRIU(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "criu")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'Version: 3.17.1'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := New(fake); !errors.Is(err, ErrOldCRIU) {
		t.Fatalf("New(criu 3.17.1): %v, want ErrOldCRIU", err)
	}
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'Version: 4.1.1'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	c, err := New(fake)
	if err != nil || c.Version != "4.1.1" {
		t.Fatalf("New(criu 4.1.1): %+v, %v", c, err)
	}
}

// TestConfinedNoNetworkLock: neither a confined dump nor its restore runs iptables-restore or
// ip6tables-restore. criu restore unlocks the network the way the dump locked it, whatever
// its own options say, and those runs took about 65 ms of a 90 ms confined restore; the
// handler's network namespace has no link out, so there is nothing to lock. Stand-ins early
// on criu's PATH record any run.
func TestConfinedNoNetworkLock(t *testing.T) {
	criu := needCRIU(t)
	root := pythonRootfs(t)
	fake := t.TempDir()
	calls := filepath.Join(fake, "calls")
	for _, name := range []string{"iptables-restore", "ip6tables-restore"} {
		script := "#!/bin/sh\necho " + name + " \"$@\" >> " + calls + "\ncat >/dev/null\n"
		if err := os.WriteFile(filepath.Join(fake, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", fake+":"+os.Getenv("PATH"))
	orig, _, _ := coldStart(t, confinedSpec(t, root))
	dir := filepath.Join(searchableTempDir(t), "img")
	if err := criu.Dump(criuCtx(t), orig, dir); err != nil {
		t.Fatal(err)
	}
	p, c := restore(t, criu, dir, RestoreOptions{Root: root})
	if r, err := c.Ask(7); err != nil || r.Served != 2 {
		t.Fatalf("restored reply %+v, %v; want served 2", r, err)
	}
	p.Close()
	if data, err := os.ReadFile(calls); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("criu ran iptables for a confined handler:\n%s(%v)", data, err)
	}
}

// confinedSpec is the test handler confined in root, as a sandbox's handler is.
func confinedSpec(tb testing.TB, root string) Spec {
	tb.Helper()
	script, err := os.ReadFile("testdata/handler.py")
	if err != nil {
		tb.Fatal(err)
	}
	return Spec{Path: "/usr/bin/python3", Args: []string{"python3", "-I", "-c", string(script)}, Env: []string{"LANG=C.UTF-8"},
		Root: root, UIDBase: 1_000_000_000}
}

// BenchmarkStart measures, in one run, a cold start of the test handler (python3 starts,
// imports and builds its table, answers one request) against a restore of its checkpoint
// (criu restore, then one request), eager and lazy, and reports the medians and the ratios:
// for the handler as it is and with 256 MiB more private memory that the request does not touch
// (ballast=), and for the handler confined in the python rootfs as a sandbox's is (confined:
// cold start and restore both confined, eager only; lazy too where vm.unprivileged_userfaultfd
// is 1).
func BenchmarkStart(b *testing.B) {
	criu := needCRIU(b)
	for _, mb := range []int{0, 256} {
		b.Run(fmt.Sprintf("ballast=%dMiB", mb), func(b *testing.B) {
			spec := handlerSpec(b)
			spec.Env = append(spec.Env, fmt.Sprintf("OBD_TEST_BALLAST_MB=%d", mb))
			benchmarkStart(b, criu, spec, "", RestoreOptions{})
		})
	}
	b.Run("confined", func(b *testing.B) {
		root := pythonRootfs(b)
		benchmarkStart(b, criu, confinedSpec(b, root), searchableTempDir(b), RestoreOptions{Root: root})
	})
}

// searchableTempDir returns a temporary directory whose path the root of a confined
// handler's user namespace can search, as a confined restore needs for its images.
func searchableTempDir(tb testing.TB) string {
	tb.Helper()
	base := tb.TempDir()
	for d := base; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o711); err != nil {
			tb.Fatal(err)
		}
	}
	return base
}

// benchmarkStart checkpoints spec's handler into base ("" = a temporary directory) and times
// cold starts against restores with opts.
func benchmarkStart(b *testing.B, criu *CRIU, spec Spec, base string, opts RestoreOptions) {
	if base == "" {
		base = b.TempDir()
	}
	dir := filepath.Join(base, "img")
	orig, _, _ := coldStart(b, spec)
	if err := criu.Dump(criuCtx(b), orig, dir); err != nil {
		b.Fatal(err)
	}
	withLazy := opts.Root == "" || unprivilegedUFFD()
	var cold, eager, lazy []time.Duration
	timeRestore := func(opts RestoreOptions) time.Duration {
		start := time.Now()
		p, c := restore(b, criu, dir, opts)
		if _, err := c.Ask(5); err != nil {
			b.Fatal(err)
		}
		d := time.Since(start)
		p.Close()
		return d
	}
	for b.Loop() {
		start := time.Now()
		p, _, _ := coldStart(b, spec)
		cold = append(cold, time.Since(start))
		p.Close()
		eager = append(eager, timeRestore(opts))
		if withLazy {
			lazyOpts := opts
			lazyOpts.LazyPages = true
			lazy = append(lazy, timeRestore(lazyOpts))
		}
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	c, e := median(cold), median(eager)
	b.ReportMetric(ms(c), "cold-ms")
	b.ReportMetric(ms(e), "restore-ms")
	b.ReportMetric(float64(c)/float64(e), "cold/restore")
	if !withLazy {
		b.Logf("%d runs, medians: cold %.1f ms, restore %.1f ms (%.1fx faster)", len(cold), ms(c), ms(e), float64(c)/float64(e))
		return
	}
	l := median(lazy)
	b.ReportMetric(ms(l), "lazy-restore-ms")
	b.ReportMetric(float64(c)/float64(l), "cold/lazy-restore")
	b.Logf("%d runs, medians: cold %.1f ms, restore %.1f ms (%.1fx faster), lazy restore %.1f ms (%.1fx faster)",
		len(cold), ms(c), ms(e), float64(c)/float64(e), ms(l), float64(c)/float64(l))
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// criuCtx bounds a criu call of a test, so that a criu that never returns fails the test with
// its log instead of running into the package's timeout.
func criuCtx(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(tb.Context(), 2*time.Minute)
	tb.Cleanup(cancel)
	return ctx
}
