package sandbox

import (
	"context"
	"errors"
)

// image is an acquired rootfs with the zygote root and runtime zygote made from it, shared by
// the functions of one image ref. Its fields change under Manager.mu.
type image struct {
	dir     string
	release func() error
	tree    *mountTree // the runtime zygote's root: the image, the install cache at /opt
	zygote  *zygote
	users   int
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
		if img.tree, err = m.imageTree(dir); err != nil {
			return nil, err
		}
		if img.zygote, err = m.startRuntimeZygote(img.tree); err != nil {
			return nil, err
		}
	}
	m.images[ref] = img
	return img, nil
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

// close stops the image's runtime zygote, unmounts its root and releases the rootfs.
func (img *image) close() error {
	var errs []error
	if img.zygote != nil {
		errs = append(errs, img.zygote.close())
	}
	errs = append(errs, img.tree.close())
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

// zygoteOf is the zygote fn's sandboxes are forked from: its own (forked from its image's, in
// the function's network namespace); nil when sandboxes start cold.
func (m *Manager) zygoteOf(fn *function) *zygote {
	m.mu.Lock()
	defer m.mu.Unlock()
	return fn.zygote
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
			m.restartFunctionZygote(fn)
		}
		return
	}
	m.restartRuntimeZygote(img, fn.Image)
}

// restartFunctionZygote replaces fn's own zygote with a new child of its image's runtime
// zygote; on failure fn has none and its sandboxes start cold. m.mu held.
func (m *Manager) restartFunctionZygote(fn *function) {
	fn.zygote.close()
	var err error
	if fn.zygote, err = fn.image.zygote.child(fn.Imports); err != nil {
		m.log.Warn("restart function zygote", "function", fn.Name, "err", err)
	}
}

// restartRuntimeZygote replaces the runtime zygote of img (ref) and the function zygotes
// forked from it. The old one is reaped in the background. m.mu held.
func (m *Manager) restartRuntimeZygote(img *image, ref string) {
	old := img.zygote
	img.zygote = nil
	// Reaping the old zygote waits for its namespace to empty, which a frozen sandbox in it
	// delays until that sandbox is destroyed.
	m.destroying.Add(1)
	go func() {
		defer m.destroying.Done()
		old.close()
	}()
	z, err := m.startRuntimeZygote(img.tree)
	if err != nil {
		m.log.Warn("restart runtime zygote", "image", ref, "err", err)
		return
	}
	img.zygote = z
	for _, f := range m.funcs {
		if f.image == img && f.zygote != nil {
			m.restartFunctionZygote(f)
		}
	}
	m.log.Info("zygotes restarted", "image", ref)
}
