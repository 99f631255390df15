package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/obdproject/obd/sandbox/cgroup"
	"github.com/obdproject/obd/sandbox/sandboxapi"
	"golang.org/x/sys/unix"
)

// nobody is the user handlers run as.
const nobody = 65534

// poolSeq numbers the cgroup pools of this process.
var poolSeq atomic.Int64

// Config configures a Manager. Zero fields take the defaults noted.
type Config struct {
	StateDir     string           // sandbox roots, scratch dirs, handler code, log; required
	Rootfs       RootfsProvider   // required
	CgroupRoot   string           // default /sys/fs/cgroup
	PoolSize     int              // cgroups created up front; default 16
	KeepAlive    time.Duration    // how long an idle sandbox stays in the handler cache; 0 disables it
	PackagesDir  string           // install cache: read-only at /opt in every sandbox; optional
	Imports      []string         // modules the runtime zygote imports; default json, sqlite3
	StartTimeout time.Duration    // bound on starting a sandbox (import of the handler included); default 30s
	SpareRoots   int              // sandboxes prepared ahead per function (cgroup, mounts; with a zygote, the set-up process); default 2, <0 for none
	NoZygotes    bool             // start every sandbox cold (for comparison)
	Log          *slog.Logger     // default slog.Default()
	Now          func() time.Time // for tests of keep-alive; default time.Now
}

// Function is a registered handler. sandboxapi.FunctionSpec is its form on the wire.
type Function struct {
	Name     string
	Image    string        // runtime image ref, resolved by the RootfsProvider
	Entry    string        // module.function, e.g. "main.handler"
	Dir      string        // handler code directory on the server
	MemoryMB int64         // memory limit; default 128
	CPUs     float64       // CPU quota in cores; default 1
	Pids     int64         // process limit; default 32
	Timeout  time.Duration // per invocation; default 10s
	Imports  []string      // modules its own zygote imports
	Packages []string      // install-cache packages on its sys.path
}

// Result is the outcome of one invocation.
type Result struct {
	Output json.RawMessage // the handler's return value as JSON
	Path   sandboxapi.StartPath
	Start  time.Duration // obtaining a ready sandbox (thaw, fork or start + handler import)
}

var namePattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)
var entryPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*\.[A-Za-z_][A-Za-z0-9_]*$`)

// Validate checks f and fills in defaults.
func (f *Function) Validate() error {
	if !namePattern.MatchString(f.Name) {
		return fmt.Errorf("sandbox: function name %q: want letters, digits, '_', '.', '-'", f.Name)
	}
	if f.Image == "" {
		return fmt.Errorf("sandbox: function %s: no image", f.Name)
	}
	if !entryPattern.MatchString(f.Entry) {
		return fmt.Errorf("sandbox: function %s: entry %q: want module.function", f.Name, f.Entry)
	}
	if f.MemoryMB == 0 {
		f.MemoryMB = 128
	}
	if f.CPUs == 0 {
		f.CPUs = 1
	}
	if f.Pids == 0 {
		f.Pids = 32
	}
	if f.Timeout == 0 {
		f.Timeout = 10 * time.Second
	}
	if f.MemoryMB < 16 || f.CPUs < 0 || f.Pids < 4 || f.Timeout < 0 {
		return fmt.Errorf("sandbox: function %s: limits too small (memory %d MB ≥ 16, pids %d ≥ 4)", f.Name, f.MemoryMB, f.Pids)
	}
	for _, m := range append(slices.Clone(f.Imports), f.Packages...) {
		if !namePattern.MatchString(m) {
			return fmt.Errorf("sandbox: function %s: bad module or package name %q", f.Name, m)
		}
	}
	return nil
}

// image is an acquired rootfs with the zygote root and runtime zygote made from it.
type image struct {
	dir     string
	release func() error
	root    *rootMount
	zygote  *zygote
	users   int
}

// function is a registered Function with its sandboxes.
type function struct {
	Function
	image  *image
	zygote *zygote // the function's own zygote, forked from the image's
	idle   []*box  // handler cache, most recently used last; all frozen
	// spare holds prepared sandboxes (no process yet), filled by
	// keepSpares until stopSpares closes; sparesDone closes when it has cleaned up.
	spare      chan *box
	stopSpares chan struct{}
	sparesDone chan struct{}
	busy       int
	stats      sandboxapi.Stats
	gone       bool // deleted; its sandboxes are destroyed instead of cached
}

// Manager registers functions and runs their invocations in sandboxes. Safe for concurrent
// use.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	pool   *cgroup.Pool
	netns  *emptyNetns
	stderr *os.File

	mu      sync.Mutex
	funcs   map[string]*function
	pending map[string]bool // names being registered
	images  map[string]*image
	nextID  int
	closed  bool

	destroying sync.WaitGroup // sandboxes being destroyed in the background
	stop       chan struct{}
	done       chan struct{}
}

// NewManager creates the cgroup pool and the shared empty network namespace and starts the
// keep-alive sweeper. Zygotes start with the first function of each image.
func NewManager(cfg Config) (*Manager, error) {
	if cfg.StateDir == "" || cfg.Rootfs == nil {
		return nil, errors.New("sandbox: config needs StateDir and Rootfs")
	}
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = "/sys/fs/cgroup"
	}
	if cfg.PoolSize == 0 {
		cfg.PoolSize = 16
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	if cfg.SpareRoots == 0 {
		cfg.SpareRoots = 2
	}
	cfg.SpareRoots = max(cfg.SpareRoots, 0)
	if cfg.Imports == nil {
		cfg.Imports = []string{"json", "sqlite3"}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	// Sandbox and zygote roots left by a server that was killed are unmounted and removed.
	for _, d := range []string{"sandboxes", "images"} {
		dir := filepath.Join(cfg.StateDir, d)
		if err := unmountUnder(dir); err != nil {
			return nil, err
		}
		if err := os.RemoveAll(dir); err != nil {
			return nil, fmt.Errorf("sandbox: state dir: %w", err)
		}
	}
	for _, d := range []string{"sandboxes", "images", "functions"} {
		if err := os.MkdirAll(filepath.Join(cfg.StateDir, d), 0o755); err != nil {
			return nil, fmt.Errorf("sandbox: state dir: %w", err)
		}
	}
	stderr, err := os.OpenFile(filepath.Join(cfg.StateDir, "sandboxes.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("sandbox: log: %w", err)
	}
	m := &Manager{cfg: cfg, log: cfg.Log, stderr: stderr, funcs: map[string]*function{}, pending: map[string]bool{}, images: map[string]*image{},
		stop: make(chan struct{}), done: make(chan struct{})}
	removeDeadPools(cfg.CgroupRoot, cfg.Log)
	// The pool name carries the pid and a sequence number so two servers, or two managers of
	// one process, never share groups.
	m.pool, err = cgroup.NewPool(cfg.CgroupRoot, fmt.Sprintf("%s%d-%d", poolPrefix, os.Getpid(), poolSeq.Add(1)), cfg.PoolSize)
	if err != nil {
		stderr.Close()
		return nil, err
	}
	if m.netns, err = newEmptyNetns(); err != nil {
		m.pool.Close()
		stderr.Close()
		return nil, err
	}
	go m.sweep()
	return m, nil
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

// Register adds f. Its image is acquired (and its zygotes started) on first use by any
// function.
func (m *Manager) Register(ctx context.Context, f Function) error {
	if err := f.Validate(); err != nil {
		return err
	}
	if st, err := os.Stat(f.Dir); err != nil || !st.IsDir() {
		return fmt.Errorf("sandbox: function %s: handler dir %q: not a directory", f.Name, f.Dir)
	}
	for _, p := range f.Packages {
		if m.cfg.PackagesDir == "" {
			return fmt.Errorf("sandbox: function %s: package %s: the server has no install cache", f.Name, p)
		}
		if _, err := os.Stat(filepath.Join(m.cfg.PackagesDir, p)); err != nil {
			return fmt.Errorf("sandbox: function %s: package %s not in the install cache: %w", f.Name, p, err)
		}
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	if _, ok := m.funcs[f.Name]; ok || m.pending[f.Name] {
		m.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrExists, f.Name)
	}
	img, err := m.acquireImage(ctx, f.Image)
	if err != nil {
		m.mu.Unlock()
		return err
	}
	m.pending[f.Name] = true
	m.nextID++
	id := m.nextID
	runtimeZygote := img.zygote
	m.mu.Unlock()

	// Compiling and forking the function's zygote take a while: not under m.mu, which every
	// invocation takes.
	fn := &function{Function: f, image: img, stats: sandboxapi.Stats{Name: f.Name},
		spare: make(chan *box, m.cfg.SpareRoots), stopSpares: make(chan struct{}), sparesDone: make(chan struct{})}
	err = m.compile(img, f.Dir, id)
	if err == nil && runtimeZygote != nil && len(f.Imports) > 0 {
		if fn.zygote, err = runtimeZygote.child(f.Imports); err != nil {
			err = fmt.Errorf("zygote: %w", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.pending, f.Name)
	if err == nil && m.closed {
		err = ErrClosed
	}
	if err != nil {
		if fn.zygote != nil {
			fn.zygote.close()
		}
		m.releaseImage(f.Image, img)
		return fmt.Errorf("sandbox: function %s: %w", f.Name, err)
	}
	m.funcs[f.Name] = fn
	if m.cfg.SpareRoots > 0 {
		go m.keepSpares(fn)
	} else {
		close(fn.sparesDone)
	}
	m.log.Info("function registered", "name", f.Name, "image", f.Image, "entry", f.Entry, "memory_mb", f.MemoryMB, "timeout", f.Timeout)
	return nil
}

// acquireImage returns the image for ref, starting its runtime zygote on first use. m.mu held.
func (m *Manager) acquireImage(ctx context.Context, ref string) (_ *image, err error) {
	if img, ok := m.images[ref]; ok {
		img.users++
		return img, nil
	}
	dir, release, err := m.cfg.Rootfs.Acquire(ctx, ref)
	if err != nil {
		return nil, err
	}
	img := &image{dir: dir, release: release, users: 1}
	defer func() {
		if err != nil {
			img.close()
		}
	}()
	if !m.cfg.NoZygotes {
		m.nextID++
		if img.root, err = mountRoot(filepath.Join(m.cfg.StateDir, "images", strconv.Itoa(m.nextID)), dir, m.packageBinds()); err != nil {
			return nil, err
		}
		if img.zygote, err = startRuntimeZygote(img.root.dir, m.netns, m.stderr, m.cfg.Imports); err != nil {
			return nil, err
		}
	}
	m.images[ref] = img
	return img, nil
}

// compile byte-compiles the handler code once, with the image's python3, into __pycache__
// next to the sources: every sandbox would otherwise compile it again on import (about 1 ms
// for a small handler, measured). No handler code runs: compileall only parses. A syntax
// error fails the registration.
func (m *Manager) compile(img *image, codeDir string, id int) error {
	root, err := mountRoot(filepath.Join(m.cfg.StateDir, "sandboxes", "compile-"+strconv.Itoa(id)), img.dir,
		[]bind{{src: codeDir, target: "srv", writable: true}})
	if err != nil {
		return err
	}
	defer root.unmount()
	cmd := &exec.Cmd{
		Path:        pythonPath,
		Args:        []string{"python3", "-I", "-c", "import compileall, sys; sys.exit(not compileall.compile_dir('/srv', quiet=1))"},
		Env:         []string{"LANG=C.UTF-8"},
		Dir:         "/",
		SysProcAttr: &syscall.SysProcAttr{Chroot: root.dir, Cloneflags: sandboxFlags, Pdeathsig: syscall.SIGKILL},
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := m.netns.start(cmd.Start); err != nil {
		return fmt.Errorf("compile handler: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		err = <-done
	}
	if err != nil {
		return fmt.Errorf("compile handler code: %w: %s", err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

func (m *Manager) packageBinds() []bind {
	if m.cfg.PackagesDir == "" {
		return nil
	}
	return []bind{{src: m.cfg.PackagesDir, target: "opt"}}
}

func (img *image) close() error {
	var errs []error
	if img.zygote != nil {
		errs = append(errs, img.zygote.close())
	}
	if img.root != nil {
		errs = append(errs, img.root.unmount())
	}
	errs = append(errs, img.release())
	return errors.Join(errs...)
}

// releaseImage drops one user of img, closing it with the last. m.mu held.
func (m *Manager) releaseImage(ref string, img *image) error {
	img.users--
	if img.users > 0 {
		return nil
	}
	delete(m.images, ref)
	return img.close()
}

// Functions lists the registered functions, sorted by name.
func (m *Manager) Functions() []Function {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Function, 0, len(m.funcs))
	for _, fn := range m.funcs {
		out = append(out, fn.Function)
	}
	slices.SortFunc(out, func(a, b Function) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Stats returns the counters of function name.
func (m *Manager) Stats(name string) (sandboxapi.Stats, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fn, ok := m.funcs[name]
	if !ok {
		return sandboxapi.Stats{}, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	st := fn.stats
	st.Idle, st.Busy = len(fn.idle), fn.busy
	return st, nil
}

// Delete unregisters function name and destroys its idle sandboxes; running invocations
// finish and their sandboxes are destroyed.
func (m *Manager) Delete(name string) error {
	m.mu.Lock()
	fn, ok := m.funcs[name]
	if !ok {
		m.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	delete(m.funcs, name)
	m.mu.Unlock()
	m.log.Info("function deleted", "name", name)
	return m.remove(fn)
}

// remove destroys what fn holds: idle sandboxes, its zygote, its use of the image.
func (m *Manager) remove(fn *function) error {
	m.mu.Lock()
	fn.gone = true
	idle := fn.idle
	fn.idle = nil
	m.mu.Unlock()
	close(fn.stopSpares)
	<-fn.sparesDone
	// Sandboxes first: a frozen sandbox in a zygote's PID namespace would make the zygote's
	// exit (which waits for the whole namespace to die) block forever.
	var errs []error
	for _, b := range idle {
		errs = append(errs, b.destroy(m.pool))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if fn.zygote != nil {
		errs = append(errs, fn.zygote.close())
	}
	errs = append(errs, m.releaseImage(fn.Image, fn.image))
	return errors.Join(errs...)
}

// Invoke runs function name with event (JSON) and returns its result. A handler that raises
// gives ErrHandler, one that runs past the function's timeout ErrTimeout (its sandbox is
// killed), one whose sandbox dies ErrCrashed. Starting a sandbox is bounded by
// Config.StartTimeout, not by the function's timeout.
func (m *Manager) Invoke(ctx context.Context, name string, event json.RawMessage) (Result, error) {
	begin := time.Now()
	m.mu.Lock()
	fn, ok := m.funcs[name]
	if !ok || m.closed {
		m.mu.Unlock()
		return Result{}, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	fn.busy++
	var b *box
	if n := len(fn.idle); n > 0 {
		b, fn.idle = fn.idle[n-1], fn.idle[:n-1]
	}
	m.mu.Unlock()

	res := Result{Path: sandboxapi.Hot}
	var err error
	if b != nil {
		err = b.group.Thaw()
	} else {
		// Starting has its own bound: the function's timeout is for its handler.
		startCtx, cancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
		b, res.Path, err = m.start(startCtx, fn, event)
		cancel()
	}
	res.Start = time.Since(begin)
	if err == nil {
		callCtx, cancel := context.WithTimeout(ctx, fn.Timeout)
		res.Output, err = b.call(callCtx, event)
		cancel()
	}
	m.finish(fn, b, res, err, time.Since(begin))
	if err != nil {
		return res, fmt.Errorf("function %s: %w", name, err)
	}
	return res, nil
}

// finish counts the invocation and puts b into the handler cache, or destroys it when caching
// is off, the function is gone, or the sandbox failed (a handler that raised leaves a healthy
// sandbox, which is kept). b is nil when the start failed, an import that raised included.
func (m *Manager) finish(fn *function, b *box, res Result, err error, took time.Duration) {
	keep := b != nil && (err == nil || errors.Is(err, ErrHandler)) && m.cfg.KeepAlive > 0
	if keep {
		if ferr := b.group.Freeze(); ferr != nil {
			m.log.Warn("freeze sandbox", "function", fn.Name, "err", ferr)
			keep = false
		}
	}
	m.mu.Lock()
	fn.busy--
	fn.stats.Invocations++
	fn.stats.TotalTime += took
	if err != nil {
		fn.stats.Errors++
	}
	switch res.Path {
	case sandboxapi.Cold:
		fn.stats.Cold++
	case sandboxapi.Warm:
		fn.stats.Warm++
	case sandboxapi.Hot:
		fn.stats.Hot++
	}
	keep = keep && !fn.gone && !m.closed
	if keep {
		b.lastUsed = m.cfg.Now()
		fn.idle = append(fn.idle, b)
	}
	m.mu.Unlock()
	if !keep && b != nil {
		m.destroyLater(b, fn.Name)
	}
}

// destroyLater destroys b off the invocation's path (the caller has its result already);
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

// start gets fn a new sandbox, sends it event as its first request and returns once the
// handler is imported (call reads the result). The sandbox is a spare, set up ahead, when one
// is waiting; else one prepared and started now: forked from a zygote when there is one, cold
// otherwise or when the zygote stopped answering.
func (m *Manager) start(ctx context.Context, fn *function, event json.RawMessage) (_ *box, _ sandboxapi.StartPath, err error) {
	b := m.takeSpare(fn)
	if b == nil {
		if b, err = m.prepare(fn, m.newID()); err != nil {
			path := sandboxapi.Cold
			if m.zygoteOf(fn) != nil {
				path = sandboxapi.Warm
			}
			return nil, path, err
		}
	}
	defer func() {
		if err != nil {
			b.destroy(m.pool)
		}
	}()
	if b.conn == nil {
		z := m.zygoteOf(fn)
		err = m.launch(fn, b, z)
		if errors.Is(err, errZygoteGone) {
			// Keep serving: this start goes cold, and the zygotes are started again.
			m.log.Warn("zygote gone, starting cold", "function", fn.Name, "err", err)
			b.conn.Close()
			err = m.launch(fn, b, nil)
			m.reviveZygotes(fn, z)
		}
		if err != nil {
			return nil, b.path, err
		}
	}
	// The event goes out at once: the sandbox reads it as soon as it is set up, so importing
	// the handler and running it follow without another round trip.
	deadline, _ := ctx.Deadline()
	if err = b.send(event, deadline); err == nil {
		_, err = b.await(deadline)
	}
	if err != nil {
		return nil, b.path, fmt.Errorf("sandbox: %s start: %w", b.path, err)
	}
	b.sent = true
	return b, b.path, nil
}

// zygoteOf is the zygote fn's sandboxes are forked from: its own, else its image's; nil when
// sandboxes start cold.
func (m *Manager) zygoteOf(fn *function) *zygote {
	m.mu.Lock()
	defer m.mu.Unlock()
	if fn.zygote != nil {
		return fn.zygote
	}
	return fn.image.zygote
}

func (m *Manager) newID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextID++
	return m.nextID
}

// takeSpare returns a spare sandbox of fn, or nil when none is waiting. Spares whose process
// died meanwhile (with their zygote, say) are destroyed on the way.
func (m *Manager) takeSpare(fn *function) *box {
	for {
		select {
		case b := <-fn.spare:
			if b.conn == nil || b.idle() {
				return b
			}
			m.destroyLater(b, fn.Name)
		default:
			return nil
		}
	}
}

// launch starts the process of b, a prepared sandbox of fn: forked from z, or cold when z is
// nil. The process joins b's cgroup and root itself; b.conn is its channel.
func (m *Manager) launch(fn *function, b *box, z *zygote) error {
	s := spec{Dir: "/srv", Entry: fn.Entry, UID: nobody, Hostname: "sandbox-" + strconv.Itoa(b.id), Cgroups: len(b.procs)}
	for _, p := range fn.Packages {
		s.Paths = append(s.Paths, "/opt/"+p)
	}
	ours, theirs, err := socketPair(unix.SOCK_STREAM)
	if err != nil {
		return err
	}
	defer theirs.Close()
	if b.conn, err = fileConn(ours); err != nil {
		return err
	}
	if z != nil {
		b.path = sandboxapi.Warm
		err = m.forkFrom(z, s, b.root.dir, theirs, b.procs)
	} else {
		b.path = sandboxapi.Cold
		err = m.startCold(b, s, theirs, b.procs)
	}
	if err != nil {
		return err
	}
	b.closeProcs()
	return nil
}

// reviveZygotes replaces dead, a zygote of fn that stopped answering: the function's own
// zygote, or the image's runtime zygote together with every function zygote forked from it
// (they lived in its PID namespace). Until it succeeds, starts go cold.
func (m *Manager) reviveZygotes(fn *function, dead *zygote) {
	m.mu.Lock()
	defer m.mu.Unlock()
	img := fn.image
	if m.closed || fn.gone || img.zygote == nil {
		return
	}
	if img.zygote.request(map[string]string{"op": "ping"}) == nil {
		if fn.zygote == dead {
			dead.close()
			var err error
			if fn.zygote, err = img.zygote.child(fn.Imports); err != nil {
				m.log.Warn("restart function zygote", "function", fn.Name, "err", err)
			}
		}
		return
	}
	old := img.zygote
	img.zygote = nil
	// Reaping the old zygote waits for its namespace to empty, which a frozen sandbox in it
	// delays until that sandbox is destroyed.
	m.destroying.Add(1)
	go func() {
		defer m.destroying.Done()
		old.close()
	}()
	z, err := startRuntimeZygote(img.root.dir, m.netns, m.stderr, m.cfg.Imports)
	if err != nil {
		m.log.Warn("restart runtime zygote", "image", fn.Image, "err", err)
		return
	}
	img.zygote = z
	for _, f := range m.funcs {
		if f.image != img || f.zygote == nil {
			continue
		}
		f.zygote.close()
		if f.zygote, err = z.child(f.Imports); err != nil {
			m.log.Warn("restart function zygote", "function", f.Name, "err", err)
		}
	}
	m.log.Info("zygotes restarted", "image", fn.Image)
}

// prepare makes everything of a sandbox for fn but its process: a cgroup with fn's limits
// (its cgroup.procs files open for the process to join), a scratch dir and a root (the image,
// the handler code, the install cache and the scratch dir, bind-mounted).
func (m *Manager) prepare(fn *function, id int) (_ *box, err error) {
	b := &box{id: id, dir: filepath.Join(m.cfg.StateDir, "sandboxes", strconv.Itoa(id))}
	if b.group, err = m.pool.Get(cgroup.Limits{MemoryBytes: fn.MemoryMB << 20, CPUs: fn.CPUs, Pids: fn.Pids}); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			b.destroy(m.pool)
		}
	}()
	if b.procs, err = b.group.OpenProcs(); err != nil {
		return nil, err
	}
	scratch := filepath.Join(b.dir, "scratch")
	if err := os.MkdirAll(scratch, 0o755); err != nil {
		return nil, fmt.Errorf("sandbox: scratch: %w", err)
	}
	if err := os.Chown(scratch, nobody, nobody); err != nil {
		return nil, fmt.Errorf("sandbox: scratch: %w", err)
	}
	binds := append(m.packageBinds(), bind{src: fn.Dir, target: "srv"}, bind{src: scratch, target: "tmp", writable: true})
	if b.root, err = mountRoot(filepath.Join(b.dir, "root"), fn.image.dir, binds); err != nil {
		return nil, err
	}
	return b, nil
}

// keepSpares keeps up to cap(fn.spare) spare sandboxes ready for fn, so that mounting (about
// 0.5-2 ms), setting cgroup limits and, with a zygote, forking the process and setting it up
// (cgroup, namespaces, chroot, nobody) are off the start path: a spare waits for its first
// event. It runs until fn.stopSpares closes, then destroys the spares.
func (m *Manager) keepSpares(fn *function) {
	defer close(fn.sparesDone)
	defer func() {
		for {
			select {
			case b := <-fn.spare:
				b.destroy(m.pool)
			default:
				return
			}
		}
	}()
	for {
		b, err := m.prepareSpare(fn)
		if err != nil {
			m.log.Warn("prepare spare sandbox", "function", fn.Name, "err", err)
			select {
			case <-fn.stopSpares:
				return
			case <-time.After(time.Second):
				continue
			}
		}
		select {
		case fn.spare <- b:
		case <-fn.stopSpares:
			b.destroy(m.pool)
			return
		}
	}
}

// prepareSpare makes one spare sandbox for fn: prepared, and with a zygote forked and set up.
// A dead zygote fails it; the next start revives the zygotes.
func (m *Manager) prepareSpare(fn *function) (_ *box, err error) {
	b, err := m.prepare(fn, m.newID())
	if err != nil {
		return nil, err
	}
	z := m.zygoteOf(fn)
	if z == nil {
		return b, nil // cold starts stay cold: only the root is prepared ahead
	}
	defer func() {
		if err != nil {
			b.destroy(m.pool)
		}
	}()
	if err := m.launch(fn, b, z); err != nil {
		return nil, err
	}
	// Handed out only once set up: by then the process is in its cgroup, so destroying the
	// spare kills it.
	r, err := b.receive(time.Now().Add(m.cfg.StartTimeout))
	if err != nil {
		return nil, fmt.Errorf("sandbox: spare set-up: %w", err)
	}
	if !r.Waiting {
		return nil, fmt.Errorf("%w: spare replied before its first event", ErrFrame)
	}
	return b, nil
}

func (m *Manager) forkFrom(z *zygote, s spec, root string, chanFile *os.File, procs []*os.File) error {
	rootFile, err := os.OpenFile(root, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("sandbox: open root: %w", err)
	}
	defer rootFile.Close()
	return z.fork(s, rootFile, chanFile, procs)
}

func (m *Manager) startCold(b *box, s spec, chanFile *os.File, procs []*os.File) error {
	js, err := json.Marshal(s)
	if err != nil {
		return err
	}
	b.cmd = runnerCmd(b.root.dir, sandboxFlags, m.stderr, append([]*os.File{chanFile}, procs...), "cold", string(js))
	if err := m.netns.start(b.cmd.Start); err != nil {
		b.cmd = nil
		return fmt.Errorf("sandbox: start cold sandbox: %w", err)
	}
	return nil
}

// sweep destroys idle sandboxes older than the keep-alive TTL until Close.
func (m *Manager) sweep() {
	defer close(m.done)
	if m.cfg.KeepAlive <= 0 {
		<-m.stop
		return
	}
	tick := time.NewTicker(max(m.cfg.KeepAlive/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-tick.C:
		}
		m.expire()
	}
}

// expire destroys the idle sandboxes whose keep-alive ran out.
func (m *Manager) expire() {
	cutoff := m.cfg.Now().Add(-m.cfg.KeepAlive)
	var old []*box
	m.mu.Lock()
	for _, fn := range m.funcs {
		// idle is ordered by last use, so the expired ones are a prefix.
		n := 0
		for n < len(fn.idle) && fn.idle[n].lastUsed.Before(cutoff) {
			n++
		}
		old = append(old, fn.idle[:n]...)
		fn.idle = slices.Delete(fn.idle, 0, n)
	}
	m.mu.Unlock()
	for _, b := range old {
		if err := b.destroy(m.pool); err != nil {
			m.log.Warn("expire sandbox", "err", err)
		}
	}
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
	m.destroying.Wait()
	// Groups still in use by running invocations are killed here; those invocations then
	// destroy their own boxes.
	errs = append(errs, m.pool.Close(), m.netns.Close(), m.stderr.Close())
	return errors.Join(errs...)
}
