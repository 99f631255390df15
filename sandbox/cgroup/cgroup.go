// Package cgroup keeps a pool of pre-created control groups for function sandboxes (the
// "cgroup" part of a sandbox in docs/DESIGN.md's "Function sandboxes and policies"). Creating a
// cgroup costs a few mkdirs per hierarchy; the pool pays that once, hands a group to a new sandbox,
// and takes it back clean (no process left, limits reset) when the sandbox ends.
//
// Both layouts are supported: cgroup v1 with separate memory, cpu, pids and freezer hierarchies
// (this machine), and the unified v2 hierarchy when /sys/fs/cgroup/cgroup.controllers exists.
// Every group lives under one parent per pool, so Close removes everything the pool made.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrBusy is returned by Put when a group still holds processes after being killed.
var ErrBusy = errors.New("cgroup: group still has processes")

// Version says which cgroup layout a pool uses.
type Version int

const (
	V1 Version = 1
	V2 Version = 2
)

// v1Controllers are the v1 hierarchies a sandbox group spans, each mounted separately.
var v1Controllers = []string{"memory", "cpu", "pids", "freezer"}

// Limits are the resource limits of one group. Zero means unlimited.
type Limits struct {
	MemoryBytes int64   // memory.limit_in_bytes / memory.max
	CPUs        float64 // CPU quota in cores per 100 ms period
	Pids        int64   // pids.max
}

const cpuPeriodMicros = 100000

// Detect reports the cgroup layout mounted at root (normally /sys/fs/cgroup).
func Detect(root string) (Version, error) {
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		return V2, nil
	}
	for _, c := range v1Controllers {
		if _, err := os.Stat(filepath.Join(root, c, "cgroup.procs")); err != nil {
			return 0, fmt.Errorf("cgroup: v1 controller %s not mounted under %s: %w", c, root, err)
		}
	}
	return V1, nil
}

// Group is one cgroup, spanning every hierarchy the pool uses.
type Group struct {
	pool *Pool
	name string
	dirs []string // v1: one per controller, in v1Controllers order; v2: one

	oomBase int64 // OOM kills counted before the current user got the group
}

// Name is the group's name inside the pool.
func (g *Group) Name() string { return g.name }

// Dirs are the group's directories, one per hierarchy (one on v2).
func (g *Group) Dirs() []string { return g.dirs }

func (g *Group) dir(controller string) string {
	if g.pool.version == V2 {
		return g.dirs[0]
	}
	for i, c := range v1Controllers {
		if c == controller {
			return g.dirs[i]
		}
	}
	panic("cgroup: unknown controller " + controller)
}

// OpenProcs opens cgroup.procs of every hierarchy for writing. A process that writes "0" to
// each joins the group; sandboxes do that themselves before running any handler code, so no
// handler instruction ever runs outside its group. The caller closes the files.
func (g *Group) OpenProcs() ([]*os.File, error) {
	files := make([]*os.File, 0, len(g.dirs))
	for _, d := range g.dirs {
		f, err := os.OpenFile(filepath.Join(d, "cgroup.procs"), os.O_WRONLY, 0)
		if err != nil {
			for _, o := range files {
				o.Close()
			}
			return nil, fmt.Errorf("cgroup %s: %w", g.name, err)
		}
		files = append(files, f)
	}
	return files, nil
}

// Add moves process pid into the group.
func (g *Group) Add(pid int) error {
	for _, d := range g.dirs {
		if err := writeFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("cgroup %s: add pid %d: %w", g.name, pid, err)
		}
	}
	return nil
}

// SetLimits applies lim to the group.
func (g *Group) SetLimits(lim Limits) error {
	if g.pool.version == V2 {
		return g.setLimitsV2(lim)
	}
	return g.setLimitsV1(lim)
}

// limitValue is n for a limit file, or unlimited when n is not positive.
func limitValue(n int64, unlimited string) string {
	if n > 0 {
		return strconv.FormatInt(n, 10)
	}
	return unlimited
}

// setLimitsV2 writes lim to the group's cgroup v2 files.
func (g *Group) setLimitsV2(lim Limits) error {
	cpu := "max " + strconv.Itoa(cpuPeriodMicros)
	if lim.CPUs > 0 {
		cpu = fmt.Sprintf("%d %d", int64(lim.CPUs*cpuPeriodMicros), cpuPeriodMicros)
	}
	if err := g.write("memory", "memory.max", limitValue(lim.MemoryBytes, "max")); err != nil {
		return err
	}
	// Without swap accounting disabled a limited group would page out instead of failing.
	if err := g.write("memory", "memory.swap.max", map[bool]string{true: "0", false: "max"}[lim.MemoryBytes > 0]); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := g.write("cpu", "cpu.max", cpu); err != nil {
		return err
	}
	return g.write("pids", "pids.max", limitValue(lim.Pids, "max"))
}

// setLimitsV1 writes lim to the group's files in the v1 hierarchies.
func (g *Group) setLimitsV1(lim Limits) error {
	mem, cpu := limitValue(lim.MemoryBytes, "-1"), "-1"
	if lim.CPUs > 0 {
		cpu = strconv.FormatInt(int64(lim.CPUs*cpuPeriodMicros), 10)
	}
	// memory+swap must stay ≥ memory: lift it, set memory, then cap memory+swap to the same
	// value so a limited group cannot page out instead of failing. Without swap accounting
	// the file does not exist.
	memsw := filepath.Join(g.dir("memory"), "memory.memsw.limit_in_bytes")
	_, err := os.Stat(memsw)
	hasMemsw := err == nil
	if hasMemsw {
		if err := g.write("memory", "memory.memsw.limit_in_bytes", "-1"); err != nil {
			return err
		}
	}
	if err := g.write("memory", "memory.limit_in_bytes", mem); err != nil {
		return err
	}
	if hasMemsw {
		if err := g.write("memory", "memory.memsw.limit_in_bytes", mem); err != nil {
			return err
		}
	}
	if err := g.write("cpu", "cpu.cfs_period_us", strconv.Itoa(cpuPeriodMicros)); err != nil {
		return err
	}
	if err := g.write("cpu", "cpu.cfs_quota_us", cpu); err != nil {
		return err
	}
	return g.write("pids", "pids.max", limitValue(lim.Pids, "max"))
}

func (g *Group) write(controller, file, value string) error {
	if err := writeFile(filepath.Join(g.dir(controller), file), value); err != nil {
		return fmt.Errorf("cgroup %s: set %s=%s: %w", g.name, file, value, err)
	}
	return nil
}

// Freeze stops every process of the group; they stay in memory and resume on Thaw.
func (g *Group) Freeze() error { return g.setFrozen(true) }

// Thaw resumes the processes Freeze stopped.
func (g *Group) Thaw() error { return g.setFrozen(false) }

func (g *Group) setFrozen(frozen bool) error {
	if g.pool.version == V2 {
		return g.write("freezer", "cgroup.freeze", map[bool]string{true: "1", false: "0"}[frozen])
	}
	return g.write("freezer", "freezer.state", map[bool]string{true: "FROZEN", false: "THAWED"}[frozen])
}

// Pids lists the processes in the group (as seen from the caller's PID namespace).
func (g *Group) Pids() ([]int, error) {
	f, err := os.Open(filepath.Join(g.dir("pids"), "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", g.name, err)
	}
	defer f.Close()
	var pids []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pid, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
		if err != nil {
			return nil, fmt.Errorf("cgroup %s: bad pid %q", g.name, sc.Text())
		}
		pids = append(pids, pid)
	}
	return pids, sc.Err()
}

// MemoryPeak is the group's highest memory use since it was last reset, in bytes.
func (g *Group) MemoryPeak() (int64, error) {
	b, err := g.readMemory("memory.max_usage_in_bytes", "memory.peak")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// oomKills is how many processes the kernel killed in the group for exceeding its memory
// limit, ever (the counter cannot be reset).
func (g *Group) oomKills() (int64, error) {
	b, err := g.readMemory("memory.oom_control", "memory.events")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, nil
}

// readMemory reads a file of the group's memory controller: v1 on a v1 hierarchy, v2 on v2.
func (g *Group) readMemory(v1, v2 string) ([]byte, error) {
	file := v1
	if g.pool.version == V2 {
		file = v2
	}
	b, err := os.ReadFile(filepath.Join(g.dir("memory"), file))
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", g.name, err)
	}
	return b, nil
}

// MemoryLimitHit reports whether the kernel killed a process of the group for exceeding the
// memory limit since the group was taken from the pool.
func (g *Group) MemoryLimitHit() bool {
	n, err := g.oomKills()
	return err == nil && n > g.oomBase
}

// Kill ends every process in the group and waits (up to timeout) until it is empty. Frozen
// processes are killed too: the group is frozen first so no process can fork during the sweep,
// then thawed so the kills are delivered.
func (g *Group) Kill(timeout time.Duration) error {
	if g.pool.version == V2 {
		if err := g.write("freezer", "cgroup.kill", "1"); err == nil {
			return g.waitEmpty(timeout)
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		pids, err := g.Pids()
		if errors.Is(err, os.ErrNotExist) {
			return nil // the group itself is gone
		}
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if err := g.Freeze(); err != nil {
			return err
		}
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
				return fmt.Errorf("cgroup %s: kill %d: %w", g.name, pid, err)
			}
		}
		if err := g.Thaw(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: %d processes after %v: %w", g.name, len(pids), timeout, ErrBusy)
		}
		time.Sleep(time.Millisecond)
	}
}

func (g *Group) waitEmpty(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids, err := g.Pids()
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: %d processes after %v: %w", g.name, len(pids), timeout, ErrBusy)
		}
		time.Sleep(time.Millisecond)
	}
}

func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(value)
	cerr := f.Close()
	if werr != nil {
		return werr
	}
	return cerr
}
