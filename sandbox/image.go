package sandbox

import (
	"context"
	"errors"
	"sync"
)

// image is an acquired rootfs with the zygote root and runtime zygote made from it, shared by
// the functions of one image ref. users and zygote change under Manager.mu; the rest is set
// before ready closes.
type image struct {
	ready   chan struct{} // closed once loaded, or failed (err)
	err     error
	dir     string
	release func() error
	tree    *mountTree // the runtime zygote's root: the image, the install cache at /opt
	zygote  *zygote
	users   int
	closed  bool // its last user released it
	// ckptRoot is the root of its checkpointed sandboxes (checkpoint.go), made once.
	ckptRoot     string
	ckptRootErr  error
	ckptRootOnce sync.Once

	reviving sync.Mutex // one revival of its zygotes at a time
}

// acquireImage returns the image for ref, loading it (the provider's Acquire, the runtime
// zygote's start) on first use. That is slow (an attach through bdd, a mount), so it happens
// outside m.mu: others asking for the same ref wait for the first.
func (m *Manager) acquireImage(ctx context.Context, ref string) (*image, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	img, loaded := m.images[ref]
	if !loaded {
		img = &image{ready: make(chan struct{})}
		m.images[ref] = img
	}
	img.users++
	m.mu.Unlock()
	if !loaded {
		img.err = m.loadImage(ctx, ref, img)
		close(img.ready)
	}
	var err error
	select {
	case <-img.ready:
		err = img.err
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		m.mu.Lock()
		closing := m.releaseImage(ref, img)
		m.mu.Unlock()
		m.closeLater(closing)
		return nil, err
	}
	return img, nil
}

// loadImage acquires the rootfs of img and starts its runtime zygote; on failure what it made
// is released.
func (m *Manager) loadImage(ctx context.Context, ref string, img *image) (err error) {
	if img.dir, img.release, err = m.cfg.Rootfs.Acquire(ctx, ref); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			img.close()
		}
	}()
	if m.cfg.NoZygotes {
		return nil
	}
	if img.tree, err = m.imageTree(img.dir); err != nil {
		return err
	}
	z, err := m.startRuntimeZygote(img.tree)
	if err != nil {
		return err
	}
	m.mu.Lock()
	img.zygote = z
	m.mu.Unlock()
	return nil
}

// imageTree is a tree of the image at dir with the install cache, if any, at /opt; all
// read-only, nosuid, nodev.
func (m *Manager) imageTree(dir string) (_ *mountTree, err error) {
	t, err := cloneTree(dir, roAttrs)
	if err != nil || m.cfg.PackagesDir == "" {
		return t, err
	}
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	pkgs, err := cloneTree(m.cfg.PackagesDir, roAttrs)
	if err != nil {
		return nil, err
	}
	return t, t.attach("opt", pkgs)
}

// close stops the image's runtime zygote, drops its tree and releases the rootfs.
func (img *image) close() error {
	var errs []error
	if img.zygote != nil {
		errs = append(errs, img.zygote.close())
		img.zygote = nil
	}
	errs = append(errs, img.tree.close(), img.closeCheckpointRoot())
	if img.release != nil {
		errs = append(errs, img.release())
		img.release = nil
	}
	return errors.Join(errs...)
}

// releaseImage drops one user of img. With the last one gone it returns the closing of img
// (stopping a zygote, detaching an image: slow), for the caller to run without m.mu; nil
// otherwise. m.mu held.
func (m *Manager) releaseImage(ref string, img *image) func() error {
	img.users--
	if img.users > 0 {
		return nil
	}
	if m.images[ref] == img {
		delete(m.images, ref)
	}
	img.closed = true
	return func() error {
		<-img.ready
		if img.err != nil {
			return nil // loadImage released what it made
		}
		return img.close()
	}
}

// closeLater runs closing (from releaseImage) in the background; Close waits for it.
func (m *Manager) closeLater(closing func() error) {
	if closing == nil {
		return
	}
	m.destroying.Add(1)
	go func() {
		defer m.destroying.Done()
		if err := closing(); err != nil {
			m.log.Warn("release image", "err", err)
		}
	}()
}

// zygoteOf is the zygote fn's sandboxes are forked from: its own (forked from its image's, in
// the function's network namespace); nil when sandboxes start cold.
func (m *Manager) zygoteOf(fn *function) *zygote {
	m.mu.Lock()
	defer m.mu.Unlock()
	return fn.zygote
}

// reviveZygotes replaces dead, a zygote of fn that stopped answering: the function's own
// zygote, or the image's runtime zygote together with every function zygote forked from it
// (they lived in its PID namespace). Until it succeeds, starts go cold. The zygotes' round
// trips happen outside m.mu (each bounded by zygoteTimeout), one revival per image at a time.
func (m *Manager) reviveZygotes(fn *function, dead *zygote) {
	img := fn.image
	img.reviving.Lock()
	defer img.reviving.Unlock()
	m.mu.Lock()
	runtime := img.zygote
	stop := m.closed || fn.gone || img.closed || runtime == nil
	m.mu.Unlock()
	if stop {
		return
	}
	if runtime.request(map[string]string{"op": "ping"}) == nil {
		m.replaceFunctionZygote(fn, dead, runtime)
		return
	}
	m.restartRuntimeZygote(img, fn.Image, runtime)
}

// replaceFunctionZygote forks a new zygote for fn from runtime in place of old, unless fn's
// zygote is no longer old (replaced meanwhile) or fn is gone. On failure fn has none and its
// sandboxes start cold.
func (m *Manager) replaceFunctionZygote(fn *function, old, runtime *zygote) {
	m.mu.Lock()
	current := fn.zygote
	m.mu.Unlock()
	if current != old {
		return
	}
	z, err := runtime.child(fn.Imports)
	if err != nil {
		m.log.Warn("restart function zygote", "function", fn.Name, "err", err)
		z = nil
	}
	m.mu.Lock()
	if fn.gone || fn.zygote != old {
		m.mu.Unlock()
		if z != nil {
			z.close()
		}
		return
	}
	fn.zygote = z
	m.mu.Unlock()
	if old != nil {
		old.close()
	}
}

// restartRuntimeZygote replaces old, the dead runtime zygote of img (ref), and the function
// zygotes forked from it. The old one is reaped in the background.
func (m *Manager) restartRuntimeZygote(img *image, ref string, old *zygote) {
	m.mu.Lock()
	if img.zygote != old {
		m.mu.Unlock()
		return
	}
	img.zygote = nil
	var funcs []*function
	for _, f := range m.funcs {
		if f.image == img {
			funcs = append(funcs, f)
		}
	}
	// Reaping the old zygote waits for its namespace to empty, which a frozen sandbox in it
	// delays until that sandbox is destroyed.
	m.destroying.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.destroying.Done()
		old.close()
	}()
	z, err := m.startRuntimeZygote(img.tree)
	if err != nil {
		m.log.Warn("restart runtime zygote", "image", ref, "err", err)
		return
	}
	m.mu.Lock()
	if m.closed || img.closed {
		m.mu.Unlock()
		z.close()
		return
	}
	img.zygote = z
	m.mu.Unlock()
	for _, f := range funcs {
		m.mu.Lock()
		fz := f.zygote
		m.mu.Unlock()
		m.replaceFunctionZygote(f, fz, z)
	}
	m.log.Info("zygotes restarted", "image", ref)
}
