package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/obdproject/obd/internal/facility"
	"golang.org/x/sys/unix"
)

// The v2 path on a cgroup2 hierarchy mounted privately for the test. A machine has one v2
// hierarchy; on a v1 host (ours) it holds no memory, cpu or pids controller (they are bound to
// the v1 hierarchies), so there this covers: detecting v2, the pool's refusal to start without
// the controllers it needs, and, on a pool made without them, creating and removing groups,
// joining by cgroup.procs, Pids, freezing and thawing by cgroup.freeze, and killing (frozen
// processes too) by cgroup.kill. Limits (memory.max, cpu.max, pids.max, memory.swap.max) and
// memory.events are covered only where the controllers are available to v2: there the test
// also runs NewPool, SetLimits and Put for real.

// mountCgroup2 mounts the v2 hierarchy at a new directory, unmounted after the test.
func mountCgroup2(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		facility.Missing(t, "mounting cgroup2 needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("none", dir, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		facility.Missing(t, "cannot mount cgroup2: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

func TestV2OnPrivateMount(t *testing.T) {
	root := mountCgroup2(t)
	v, err := Detect(root)
	if err != nil || v != V2 {
		t.Fatalf("Detect on a cgroup2 mount = %v, %v; want V2", v, err)
	}
	name := fmt.Sprintf("obd-cgtest-v2-%d", os.Getpid())
	controllers := strings.Fields(readTrim(t, filepath.Join(root, "cgroup.controllers")))
	full := slices.Contains(controllers, "memory") && slices.Contains(controllers, "cpu") && slices.Contains(controllers, "pids")
	if full {
		testV2Pool(t, root, name)
		return
	}
	t.Logf("v2 hierarchy has controllers %v: limits not covered here", controllers)
	if _, err := NewPool(root, name, 1); err == nil || !strings.Contains(err.Error(), "enable controllers") {
		t.Errorf("NewPool without the memory, cpu and pids controllers: %v, want a refusal", err)
	}
	if _, err := os.Stat(filepath.Join(root, name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused pool left %s", name)
	}
	// The controller-free part of the v2 path, on a pool made without controllers.
	p := newPool(root, V2, name)
	if err := os.Mkdir(p.parents[0], 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	g, err := p.create()
	if err != nil {
		t.Fatal(err)
	}
	testV2Group(t, g)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.parents[0]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left after Close", p.parents[0])
	}
}

// testV2Group joins a process to g through an open cgroup.procs file (as sandboxes do), then
// freezes, thaws and kills it.
func testV2Group(t *testing.T, g *Group) {
	t.Helper()
	procs, err := g.OpenProcs()
	if err != nil {
		t.Fatal(err)
	}
	cmd := startSleeper(t)
	_, err = procs[0].WriteString(fmt.Sprint(cmd.Process.Pid))
	procs[0].Close()
	if err != nil {
		t.Fatal(err)
	}
	if pids, err := g.Pids(); err != nil || !slices.Equal(pids, []int{cmd.Process.Pid}) {
		t.Fatalf("pids %v, %v; want the sleeper", pids, err)
	}
	if err := g.Freeze(); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, g, "frozen 1")
	if err := g.Thaw(); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, g, "frozen 0")
	if err := g.Freeze(); err != nil {
		t.Fatal(err)
	}
	if err := g.Kill(5 * time.Second); err != nil {
		t.Fatalf("kill a frozen group: %v", err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(cmd.Process.Pid, &ws, 0, nil); err != nil || ws.Signal() != syscall.SIGKILL {
		t.Errorf("sleeper: %v, %v; want killed", ws, err)
	}
	g.Thaw()
}

// waitEvent waits until the group's cgroup.events has line (the kernel settles freezing
// asynchronously).
func waitEvent(t *testing.T, g *Group, line string) {
	t.Helper()
	for i := 0; ; i++ {
		b, err := os.ReadFile(filepath.Join(g.dirs[0], "cgroup.events"))
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(strings.Split(string(b), "\n"), line) {
			return
		}
		if i == 5000 {
			t.Fatalf("cgroup.events never had %q: %s", line, b)
		}
		time.Sleep(time.Millisecond)
	}
}

// testV2Pool runs the whole pool on a v2 hierarchy with its controllers.
func testV2Pool(t *testing.T, root, name string) {
	p, err := NewPool(root, name, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.SetLimits(Limits{Pids: 64}); err != nil {
		t.Fatal(err)
	}
	g, err := p.Get(Limits{MemoryBytes: 64 << 20, CPUs: 0.5, Pids: 8})
	if err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{"memory.max": "67108864", "cpu.max": "50000 100000", "pids.max": "8"} {
		if got := readTrim(t, filepath.Join(g.dirs[0], file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	testV2Group(t, g)
	if err := p.Put(g); err != nil {
		t.Fatal(err)
	}
}
