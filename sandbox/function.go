package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// Function is a registered handler. sandboxapi.FunctionSpec is its form on the wire.
type Function struct {
	Name      string
	Image     string        // runtime image ref, resolved by the RootfsProvider
	Entry     string        // module.function, e.g. "main.handler"
	Dir       string        // handler code directory on the server; registration gives it to the sandbox user (chown)
	MemoryMB  int64         // memory limit; default 128
	CPUs      float64       // CPU quota in cores; default 1
	Pids      int64         // process limit; default 32
	Timeout   time.Duration // per invocation; default 10s
	ScratchMB int64         // size of its /tmp (a tmpfs, counted in its memory too); default 64
	Imports   []string      // modules its own zygote imports
	Packages  []string      // install-cache packages on its sys.path
	Policy    string        // keep-alive and pre-warm policy (Config.Policies); empty: the server's default
	// Checkpoint: restore starts from a checkpoint of an initialized sandbox (checkpoint.go);
	// needs Config.CRIU. Its sandboxes are not lent.
	Checkpoint bool
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
	if f.ScratchMB == 0 {
		f.ScratchMB = 64
	}
	if f.MemoryMB < 16 || f.CPUs < 0 || f.Pids < 4 || f.Timeout < 0 || f.ScratchMB < 1 {
		return fmt.Errorf("sandbox: function %s: limits too small (memory %d MB ≥ 16, pids %d ≥ 4, scratch %d MB ≥ 1)", f.Name, f.MemoryMB, f.Pids, f.ScratchMB)
	}
	for _, m := range append(slices.Clone(f.Imports), f.Packages...) {
		if !namePattern.MatchString(m) {
			return fmt.Errorf("sandbox: function %s: bad module or package name %q", f.Name, m)
		}
	}
	return nil
}

// function is a registered Function with its sandboxes.
type function struct {
	Function
	image  *image
	tree   *mountTree   // its sandboxes' root but scratch: image, code at /srv, packages at /opt, devices; nil once removed
	treeMu sync.RWMutex // guards tree: clones (many at once) against its close
	zygote *zygote      // the function's own zygote, forked from the image's
	idle   []*box       // handler cache, most recently used last; all frozen
	// spare holds prepared sandboxes (no process yet), filled by
	// keepSpares until stopSpares closes; sparesDone closes when it has cleaned up.
	spare      chan *box
	stopSpares chan struct{}
	sparesDone chan struct{}
	busy       int
	stats      sandboxapi.Stats
	policy     Policy        // keep-alive and pre-warm decisions (Function.Policy)
	pending    []pendingWarm // pre-warms not yet started
	gone       bool          // deleted; its sandboxes are destroyed instead of cached
	ckpt       *fnCheckpoint // with Checkpoint: its checkpoint, once made
}

// registration is a function between reserve and commit: its name is taken and its image
// acquired, its code not yet installed.
type registration struct {
	fn      *function
	id      int     // names the root the code is compiled in
	runtime *zygote // the image's runtime zygote at reserve time; nil without zygotes
}

// Register adds f. Its image is acquired (and its zygotes started) on first use by any
// function. It fails with ErrExists for a name registered or being registered, ErrClosed once
// the manager is closed.
func (m *Manager) Register(ctx context.Context, f Function) error {
	if err := m.admit(&f); err != nil {
		return err
	}
	r, err := m.reserve(ctx, f)
	if err != nil {
		return err
	}
	// Compiling and forking the function's zygote take a while: not under m.mu, which every
	// invocation takes.
	return m.commit(r.fn, m.install(r))
}

// admit validates f (filling in its defaults) and checks that its handler dir and its
// packages exist on the server.
func (m *Manager) admit(f *Function) error {
	if err := f.Validate(); err != nil {
		return err
	}
	if mx := m.cfg.MaxLimits; f.MemoryMB > mx.MemoryMB || f.CPUs > mx.CPUs || f.Pids > mx.Pids || f.Timeout > mx.Timeout || f.ScratchMB > mx.ScratchMB {
		return fmt.Errorf("sandbox: function %s: limits over the server's maximum (memory %d MB, %g CPUs, %d pids, timeout %v, scratch %d MB)",
			f.Name, mx.MemoryMB, mx.CPUs, mx.Pids, mx.Timeout, mx.ScratchMB)
	}
	if st, err := os.Stat(f.Dir); err != nil || !st.IsDir() {
		return fmt.Errorf("sandbox: function %s: handler dir %q: not a directory", f.Name, f.Dir)
	}
	if f.Checkpoint && m.cfg.CRIU == nil {
		return fmt.Errorf("sandbox: function %s: checkpoint: the server has no criu", f.Name)
	}
	for _, p := range f.Packages {
		if m.cfg.PackagesDir == "" {
			return fmt.Errorf("sandbox: function %s: package %s: the server has no install cache", f.Name, p)
		}
		if _, err := os.Stat(filepath.Join(m.cfg.PackagesDir, p)); err != nil {
			return fmt.Errorf("sandbox: function %s: package %s not in the install cache: %w", f.Name, p, err)
		}
	}
	return nil
}

// reserve takes f's name (as pending) and acquires its image.
func (m *Manager) reserve(ctx context.Context, f Function) (registration, error) {
	pol, err := m.policyFor(f.Policy)
	if err != nil {
		return registration{}, fmt.Errorf("sandbox: function %s: %w", f.Name, err)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return registration{}, ErrClosed
	}
	if _, ok := m.funcs[f.Name]; ok || m.pending[f.Name] {
		m.mu.Unlock()
		return registration{}, fmt.Errorf("%w: %s", ErrExists, f.Name)
	}
	m.pending[f.Name] = true
	m.mu.Unlock()
	img, err := m.acquireImage(ctx, f.Image)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		delete(m.pending, f.Name)
		return registration{}, err
	}
	m.nextID++
	fn := &function{Function: f, image: img, stats: sandboxapi.Stats{Name: f.Name}, policy: pol,
		spare: make(chan *box, m.cfg.SpareRoots), stopSpares: make(chan struct{}), sparesDone: make(chan struct{})}
	return registration{fn: fn, id: m.nextID, runtime: img.zygote}, nil
}

// install byte-compiles the handler code of r and, when its image has a zygote, forks the
// function's own zygote (its imports, its network namespace).
func (m *Manager) install(r registration) (err error) {
	fn := r.fn
	err = m.compile(fn.image, fn.Dir)
	if err == nil {
		fn.tree, err = m.functionTree(fn)
	}
	if err == nil && r.runtime != nil {
		if fn.zygote, err = r.runtime.child(fn.Imports); err != nil {
			err = fmt.Errorf("zygote: %w", err)
		}
	}
	return err
}

// commit ends fn's registration: with installErr nil and the manager open, fn is registered
// and its spares start; otherwise what fn holds is released and the error returned.
func (m *Manager) commit(fn *function, installErr error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.pending, fn.Name)
	err := installErr
	if err == nil && m.closed {
		err = ErrClosed
	}
	if err != nil {
		if fn.zygote != nil {
			fn.zygote.close()
		}
		fn.closeTree()
		m.closeLater(m.releaseImage(fn.Image, fn.image))
		return fmt.Errorf("sandbox: function %s: %w", fn.Name, err)
	}
	m.funcs[fn.Name] = fn
	if fn.Checkpoint {
		m.nextID++
		fn.ckpt = &fnCheckpoint{ready: make(chan struct{}), dir: m.checkpointDir(fn, m.nextID)}
		m.background.Add(1)
		go m.makeCheckpoint(fn, fn.ckpt)
	}
	if m.cfg.SpareRoots > 0 {
		go m.keepSpares(fn)
	} else {
		close(fn.sparesDone)
	}
	m.log.Info("function registered", "name", fn.Name, "image", fn.Image, "entry", fn.Entry, "memory_mb", fn.MemoryMB, "timeout", fn.Timeout)
	return nil
}

// cloneTree returns a new clone of fn's tree, for one sandbox.
func (fn *function) cloneTree() (*mountTree, error) {
	fn.treeMu.RLock()
	defer fn.treeMu.RUnlock()
	if fn.tree == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, fn.Name)
	}
	return fn.tree.clone()
}

func (fn *function) closeTree() error {
	fn.treeMu.Lock()
	defer fn.treeMu.Unlock()
	err := fn.tree.close()
	fn.tree = nil
	return err
}

// functionTree is the root of fn's sandboxes but their scratch: the image's tree with the
// handler code at /srv and the host's null, zero, random and urandom devices.
func (m *Manager) functionTree(fn *function) (_ *mountTree, err error) {
	t, err := m.imageTree(fn.image.dir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	code, err := cloneTree(fn.Dir, roAttrs)
	if err != nil {
		return nil, err
	}
	if err := t.attach("srv", code); err != nil {
		return nil, err
	}
	return t, t.bindDevices()
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

// Delete unregisters function name and destroys its idle sandboxes; running invocations
// finish and their sandboxes are destroyed. It returns what was registered.
func (m *Manager) Delete(name string) (Function, error) {
	m.mu.Lock()
	fn, ok := m.funcs[name]
	if !ok {
		m.mu.Unlock()
		return Function{}, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	delete(m.funcs, name)
	m.mu.Unlock()
	m.log.Info("function deleted", "name", name)
	return fn.Function, m.remove(fn)
}

// remove destroys what fn holds: idle sandboxes, spares, its zygote, its use of the image.
func (m *Manager) remove(fn *function) error {
	m.mu.Lock()
	fn.gone = true
	idle := fn.idle
	fn.idle, fn.pending = nil, nil
	m.mu.Unlock()
	fn.policy.Forget(fn.Name)
	close(fn.stopSpares)
	<-fn.sparesDone
	// Sandboxes first: a frozen sandbox in a zygote's PID namespace would make the zygote's
	// exit (which waits for the whole namespace to die) block forever.
	var errs []error
	for _, b := range idle {
		errs = append(errs, b.destroy(m.pool))
	}
	m.mu.Lock()
	if fn.zygote != nil {
		errs = append(errs, fn.zygote.close())
	}
	errs = append(errs, fn.closeTree())
	if fn.ckpt != nil {
		errs = append(errs, fn.ckpt.close())
	}
	closing := m.releaseImage(fn.Image, fn.image)
	m.mu.Unlock()
	if closing != nil {
		errs = append(errs, closing())
	}
	return errors.Join(errs...)
}
