package cgroup

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/obdproject/obd/internal/facility"
)

const sysCgroup = "/sys/fs/cgroup"

func newTestPool(t *testing.T, size int) *Pool {
	t.Helper()
	if os.Geteuid() != 0 {
		facility.Missing(t, "cgroup pools need root")
	}
	if _, err := Detect(sysCgroup); err != nil {
		facility.Missing(t, "no usable cgroup hierarchy: %v", err)
	}
	p, err := NewPool(sysCgroup, fmt.Sprintf("obd-cgtest-%d-%s", os.Getpid(), t.Name()), size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		for _, d := range p.parents {
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s left behind after Close", d)
			}
		}
	})
	return p
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func startSleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// sleeperInGroup takes a group from p and starts a sleeping process in it.
func sleeperInGroup(t *testing.T, p *Pool, lim Limits) (*Group, *exec.Cmd) {
	t.Helper()
	g, err := p.Get(lim)
	if err != nil {
		t.Fatal(err)
	}
	cmd := startSleeper(t)
	if err := g.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	return g, cmd
}

func TestPoolLimitsAndReuse(t *testing.T) {
	p := newTestPool(t, 2)
	if p.Free() != 2 {
		t.Fatalf("free = %d, want 2", p.Free())
	}
	g, err := p.Get(Limits{MemoryBytes: 64 << 20, CPUs: 0.5, Pids: 16})
	if err != nil {
		t.Fatal(err)
	}
	if p.Free() != 1 {
		t.Fatalf("free after Get = %d, want 1", p.Free())
	}
	if p.Version() == V1 {
		if got := readTrim(t, filepath.Join(g.dir("memory"), "memory.limit_in_bytes")); got != "67108864" {
			t.Errorf("memory limit %s", got)
		}
		if memsw := filepath.Join(g.dir("memory"), "memory.memsw.limit_in_bytes"); fileExists(memsw) && readTrim(t, memsw) != "67108864" {
			t.Errorf("memory+swap limit %s, want the memory limit", readTrim(t, memsw))
		}
		if got := readTrim(t, filepath.Join(g.dir("cpu"), "cpu.cfs_quota_us")); got != "50000" {
			t.Errorf("cpu quota %s", got)
		}
	} else {
		if got := readTrim(t, filepath.Join(g.dir("memory"), "memory.max")); got != "67108864" {
			t.Errorf("memory.max %s", got)
		}
		if got := readTrim(t, filepath.Join(g.dir("cpu"), "cpu.max")); got != "50000 100000" {
			t.Errorf("cpu.max %s", got)
		}
	}
	if got := readTrim(t, filepath.Join(g.dir("pids"), "pids.max")); got != "16" {
		t.Errorf("pids.max %s", got)
	}
	if err := p.Put(g); err != nil {
		t.Fatal(err)
	}
	g2, err := p.Get(Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if g2 != g {
		t.Errorf("Get after Put did not reuse the returned group")
	}
	// The next user's limits replace every earlier one.
	if got := readTrim(t, filepath.Join(g.dir("pids"), "pids.max")); got != "max" {
		t.Errorf("pids.max for a reused group without limits: %s, want max", got)
	}
	if p.Version() == V1 {
		if got := readTrim(t, filepath.Join(g.dir("memory"), "memory.limit_in_bytes")); got == "67108864" {
			t.Errorf("memory limit of the previous user kept: %s", got)
		}
	}
	p.Put(g2)
}

func TestPutKillsFrozenProcesses(t *testing.T) {
	p := newTestPool(t, 1)
	g, cmd := sleeperInGroup(t, p, Limits{})
	pids, err := g.Pids()
	if err != nil || len(pids) != 1 || pids[0] != cmd.Process.Pid {
		t.Fatalf("Pids = %v, %v; want [%d]", pids, err, cmd.Process.Pid)
	}
	if err := g.Freeze(); err != nil {
		t.Fatal(err)
	}
	if p.Version() == V1 {
		deadline := time.Now().Add(2 * time.Second)
		for readTrim(t, filepath.Join(g.dir("freezer"), "freezer.state")) != "FROZEN" {
			if time.Now().After(deadline) {
				t.Fatal("group never reached FROZEN")
			}
			time.Sleep(time.Millisecond)
		}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if err := p.Put(g); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("sleeper exited cleanly; want killed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("sleeper still running after Put")
	}
	if pids, _ := g.Pids(); len(pids) != 0 {
		t.Fatalf("group returned to pool with processes %v", pids)
	}
}

func TestCloseKillsOutstandingGroups(t *testing.T) {
	p := newTestPool(t, 0)
	_, cmd := sleeperInGroup(t, p, Limits{Pids: 4})
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil {
		t.Fatal("process in an outstanding group survived Close")
	}
	if _, err := p.Get(Limits{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Get after Close: %v, want ErrClosed", err)
	}
}

func TestLeftoverPoolIsReplaced(t *testing.T) {
	p := newTestPool(t, 1)
	name := filepath.Base(p.parents[0])
	// A pool that is never closed stands for a killed server: its directories stay, and a new
	// pool of that name must start clean instead of failing with EEXIST.
	if _, err := NewPool(sysCgroup, name+"-x", 1); err != nil {
		t.Fatal(err)
	}
	again, err := NewPool(sysCgroup, name+"-x", 3)
	if err != nil {
		t.Fatalf("new pool over leftover: %v", err)
	}
	if again.Free() != 3 {
		t.Fatalf("free = %d", again.Free())
	}
	if err := again.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestRemoveLeftoverKillsFrozenProcesses(t *testing.T) {
	p := newTestPool(t, 1)
	g, cmd := sleeperInGroup(t, p, Limits{})
	if err := g.Freeze(); err != nil {
		t.Fatal(err)
	}
	// As if the pool's owner died: another process removes what it left.
	name := filepath.Base(p.parents[0])
	names, err := Pools(sysCgroup, "obd-cgtest-")
	if err != nil || !slices.Contains(names, name) {
		t.Fatalf("Pools = %v, %v; want it to list %s", names, err, name)
	}
	if err := RemoveLeftover(sysCgroup, name); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil {
		t.Fatal("frozen process of a leftover pool survived")
	}
	for _, d := range p.parents {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left", d)
		}
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func TestV1PoolHoldsOneEmptyGroupFrozen(t *testing.T) {
	p := newTestPool(t, 1)
	if p.Version() != V1 {
		t.Skip("only the v1 freezer switches a static key")
	}
	d := filepath.Join(p.parents[slices.Index(v1Controllers, "freezer")], frozenName)
	if st := readTrim(t, filepath.Join(d, "freezer.state")); st != "FROZEN" {
		t.Errorf("%s: freezer.state %s, want FROZEN", d, st)
	}
	if procs := readTrim(t, filepath.Join(d, "cgroup.procs")); procs != "" {
		t.Errorf("%s holds processes %q, want none", d, procs)
	}
	// Freezing and thawing sandbox groups leaves it frozen.
	g, err := p.Get(Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Freeze(); err != nil {
		t.Fatal(err)
	}
	if err := p.Put(g); err != nil {
		t.Fatal(err)
	}
	if st := readTrim(t, filepath.Join(d, "freezer.state")); st != "FROZEN" {
		t.Errorf("after a sandbox group's freeze and thaw: %s", st)
	}
}
