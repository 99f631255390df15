package sandbox

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/obdproject/obd/checkpoint"
	"github.com/obdproject/obd/sandbox/cgroup"
	"golang.org/x/sys/unix"
)

// The Manager's work is cut by concern, one file each:
//   - manager.go: its configuration, creation and Close;
//   - function.go: the function registry (Register, Functions, Delete) and admission checks;
//   - compile.go: installing handler code (byte-compiled once at registration);
//   - image.go: images, shared by functions, with their roots and zygotes (and their revival);
//   - invoke.go: Invoke, from a ready sandbox to the result;
//   - start.go: starting a new sandbox (prepare, launch from a zygote or cold);
//   - spare.go: spare sandboxes prepared ahead of demand;
//   - policy.go: the keep-alive and pre-warm Policy a function is under;
//   - cache.go: the handler cache of idle sandboxes, its pre-warms and its sweep;
//   - lend.go: lending an idle sandbox to another function (cross-function reuse);
//   - stats.go: the per-function counters.

// poolSeq numbers the cgroup pools of this process.
var poolSeq atomic.Int64

// Config configures a Manager. Zero fields take the defaults noted.
type Config struct {
	StateDir   string         // sandbox roots, scratch dirs, handler code, log; required
	Rootfs     RootfsProvider // required
	CgroupRoot string         // default /sys/fs/cgroup
	PoolSize   int            // cgroups created up front; default 16
	KeepAlive  time.Duration  // without Policies: how long an idle sandbox stays in the handler cache; 0 disables it
	// Policies resolves a function's keep-alive and pre-warm policy (Function.Policy; ""
	// is the server's default). One Policy may serve many functions: it keeps state per
	// function. Nil: every function keeps idle sandboxes for KeepAlive.
	Policies     func(spec string) (Policy, error)
	PackagesDir  string        // install cache: read-only at /opt in every sandbox; optional
	Imports      []string      // modules the runtime zygote imports; default json, sqlite3
	StartTimeout time.Duration // bound on starting a sandbox (import of the handler included); default 30s
	SpareRoots   int           // sandboxes prepared ahead per function (cgroup, mounts; with a zygote, the set-up process); default 2, <0 for none
	NoZygotes    bool          // start every sandbox cold, or restored (for comparison)
	// CRIU checkpoints and restores the sandboxes of functions registered with Checkpoint
	// (checkpoint.go); nil: such functions are refused.
	CRIU *checkpoint.CRIU
	// Checkpoints, when set, keeps checkpoints beyond this node: one found there is restored
	// instead of made, one made here is stored.
	Checkpoints  CheckpointStore
	UIDBase      int              // sandbox uids and gids 0..65535 are these on the host; default 1000000000
	MaxLimits    Limits           // what a function may ask for; zero fields take DefaultMaxLimits
	PoolLimits   cgroup.Limits    // all sandboxes and zygotes together (the pool's parent cgroup); zero fields: unlimited
	ZygoteLimits cgroup.Limits    // each image's zygotes together; default 1 GiB, 512 processes
	Log          *slog.Logger     // default slog.Default()
	Now          func() time.Time // for tests of keep-alive; default time.Now
}

// setDefaults fills in the zero fields of c that have defaults.
func (c *Config) setDefaults() {
	if c.CgroupRoot == "" {
		c.CgroupRoot = "/sys/fs/cgroup"
	}
	if c.PoolSize == 0 {
		c.PoolSize = 16
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 30 * time.Second
	}
	if c.SpareRoots == 0 {
		c.SpareRoots = 2
	}
	c.SpareRoots = max(c.SpareRoots, 0)
	if c.Imports == nil {
		c.Imports = []string{"json", "sqlite3"}
	}
	if c.UIDBase == 0 {
		c.UIDBase = 1_000_000_000
	}
	c.MaxLimits.fill(DefaultMaxLimits)
	if c.ZygoteLimits == (cgroup.Limits{}) {
		c.ZygoteLimits = cgroup.Limits{MemoryBytes: 1 << 30, Pids: 512}
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Limits are the resources of a function: each of its sandboxes gets them.
type Limits struct {
	MemoryMB  int64
	CPUs      float64
	Pids      int64
	Timeout   time.Duration
	ScratchMB int64
}

// DefaultMaxLimits are the most a function may ask for unless Config.MaxLimits says otherwise.
var DefaultMaxLimits = Limits{MemoryMB: 4096, CPUs: 4, Pids: 1024, Timeout: 15 * time.Minute, ScratchMB: 4096}

// fill sets the zero fields of l from d.
func (l *Limits) fill(d Limits) {
	if l.MemoryMB == 0 {
		l.MemoryMB = d.MemoryMB
	}
	if l.CPUs == 0 {
		l.CPUs = d.CPUs
	}
	if l.Pids == 0 {
		l.Pids = d.Pids
	}
	if l.Timeout == 0 {
		l.Timeout = d.Timeout
	}
	if l.ScratchMB == 0 {
		l.ScratchMB = d.ScratchMB
	}
}

// Manager registers functions and runs their invocations in sandboxes. Safe for concurrent
// use.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	pool   *cgroup.Pool
	stderr *os.File
	exe    *os.File // the server's binary, re-executed to confine image code (confine.go)

	poolName string

	mu      sync.Mutex
	funcs   map[string]*function
	pending map[string]bool // names being registered
	images  map[string]*image
	nextID  int
	closed  bool

	// lends, lendsServed and lendFailures count lent sandboxes (ServerStats); m.mu held.
	lends, lendsServed, lendFailures int64

	destroying sync.WaitGroup // sandboxes being destroyed in the background
	background sync.WaitGroup // pre-warms under way
	wake       chan struct{}  // a new deadline for the sweeper
	stop       chan struct{}
	done       chan struct{}
}

// NewManager creates the cgroup pool (bounded by cfg.PoolLimits) and starts the
// sweeper of idle sandboxes and pre-warms. Zygotes start with the first function of each image. What a killed
// server left in cfg.StateDir and the cgroup root is removed first.
func NewManager(cfg Config) (*Manager, error) {
	if cfg.StateDir == "" || cfg.Rootfs == nil {
		return nil, errors.New("sandbox: config needs StateDir and Rootfs")
	}
	cfg.setDefaults()
	if cfg.UIDBase < 1 || cfg.UIDBase > 1<<32-1-idRange {
		return nil, fmt.Errorf("sandbox: uid base %d out of range", cfg.UIDBase)
	}
	if p := cfg.PoolLimits; p.CPUs > 0 && cfg.MaxLimits.CPUs > p.CPUs {
		return nil, fmt.Errorf("sandbox: a function's CPU maximum %g is over the pool's %g", cfg.MaxLimits.CPUs, p.CPUs)
	}
	if _, _, _, err := filters(); err != nil {
		return nil, err
	}
	if err := resetStateDir(cfg.StateDir); err != nil {
		return nil, err
	}
	stderr, err := os.OpenFile(filepath.Join(cfg.StateDir, "sandboxes.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("sandbox: log: %w", err)
	}
	exe, err := os.Open("/proc/self/exe")
	if err != nil {
		stderr.Close()
		return nil, fmt.Errorf("sandbox: open own binary: %w", err)
	}
	m := &Manager{cfg: cfg, log: cfg.Log, stderr: stderr, exe: exe, funcs: map[string]*function{}, pending: map[string]bool{}, images: map[string]*image{},
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	removeDeadPools(cfg.CgroupRoot, cfg.Log)
	// The pool name carries the pid and a sequence number so two servers, or two managers of
	// one process, never share groups.
	m.poolName = fmt.Sprintf("%s%d-%d", poolPrefix, os.Getpid(), poolSeq.Add(1))
	m.pool, err = cgroup.NewPool(cfg.CgroupRoot, m.poolName, cfg.PoolSize)
	if err == nil {
		if err = m.pool.SetLimits(cfg.PoolLimits); err != nil {
			m.pool.Close()
		}
	}
	if err != nil {
		stderr.Close()
		exe.Close()
		return nil, err
	}
	go m.sweep()
	return m, nil
}

// resetStateDir unmounts and removes the sandbox and zygote roots a killed server left under
// stateDir, and makes the empty dirs a manager works in.
func resetStateDir(stateDir string) error {
	for _, d := range []string{"sandboxes", "images", "checkpoints"} {
		dir := filepath.Join(stateDir, d)
		if err := unmountUnder(dir); err != nil {
			return err
		}
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("sandbox: state dir: %w", err)
		}
	}
	for _, d := range []string{"sandboxes", "images", "functions", "checkpoints"} {
		if err := os.MkdirAll(filepath.Join(stateDir, d), 0o755); err != nil {
			return fmt.Errorf("sandbox: state dir: %w", err)
		}
	}
	return nil
}

// poolPrefix starts the name of every manager's cgroup pool: poolPrefix-PID-SEQ.
const poolPrefix = "obd-sandbox-"

// removeDeadPools removes the cgroup pools of servers that died without closing them (their
// sandboxes may still run, or sit frozen), so nothing accumulates across crashes.
func removeDeadPools(root string, log *slog.Logger) {
	names, err := cgroup.Pools(root, poolPrefix)
	if err != nil {
		return
	}
	for _, name := range names {
		pid, _, _ := strings.Cut(strings.TrimPrefix(name, poolPrefix), "-")
		if n, err := strconv.Atoi(pid); err != nil || unix.Kill(n, 0) == nil {
			continue
		}
		if err := cgroup.RemoveLeftover(root, name); err != nil {
			log.Warn("remove dead server's cgroups", "pool", name, "err", err)
			continue
		}
		log.Info("removed dead server's cgroups", "pool", name)
	}
}

// newID returns a number no other sandbox or root of m has; it names their dirs.
func (m *Manager) newID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextID++
	return m.nextID
}

// destroyLater destroys b off the caller's path (an invocation has its result already);
// Close waits for it.
func (m *Manager) destroyLater(b *box, fn string) {
	m.destroying.Add(1)
	go func() {
		defer m.destroying.Done()
		if err := b.destroy(m.pool); err != nil {
			m.log.Warn("destroy sandbox", "function", fn, "err", err)
		}
	}()
}

// Close destroys every sandbox and zygote, unmounts every root, releases every image and
// removes the cgroup pool and the network namespace: nothing the manager made is left.
// Invocations still running fail.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	funcs := m.funcs
	m.funcs = map[string]*function{}
	m.mu.Unlock()
	close(m.stop)
	<-m.done
	var errs []error
	for _, fn := range funcs {
		errs = append(errs, m.remove(fn))
	}
	m.background.Wait()
	m.destroying.Wait()
	// Groups still in use by running invocations are killed here; those invocations then
	// destroy their own boxes.
	errs = append(errs, m.pool.Close(), m.stderr.Close(), m.exe.Close())
	return errors.Join(errs...)
}
