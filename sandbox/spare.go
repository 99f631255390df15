package sandbox

import (
	"fmt"
	"time"
)

// spareRetry is how long keepSpares waits after failing to prepare a spare.
const spareRetry = time.Second

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

// keepSpares keeps up to cap(fn.spare) spare sandboxes ready for fn, so that mounting (about
// 0.5-2 ms), setting cgroup limits and, with a zygote, forking the process and setting it up
// (cgroup, namespaces, chroot, nobody) are off the start path: a spare waits for its first
// event. It runs until fn.stopSpares closes, then destroys the spares and closes
// fn.sparesDone.
func (m *Manager) keepSpares(fn *function) {
	defer close(fn.sparesDone)
	defer m.destroySpares(fn)
	for {
		b, err := m.prepareSpare(fn)
		if err != nil {
			m.log.Warn("prepare spare sandbox", "function", fn.Name, "err", err)
			select {
			case <-fn.stopSpares:
				return
			case <-time.After(spareRetry):
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

// destroySpares destroys the spares waiting in fn.spare.
func (m *Manager) destroySpares(fn *function) {
	for {
		select {
		case b := <-fn.spare:
			b.destroy(m.pool)
		default:
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
	if err := b.awaitSetUp(m.cfg.StartTimeout); err != nil {
		return nil, err
	}
	return b, nil
}

// ready makes a sandbox of fn with its process started (forked from fn's zygote, or cold)
// and set up, waiting for its first event: a pre-warmed sandbox.
func (m *Manager) ready(fn *function) (_ *box, err error) {
	b, err := m.prepare(fn, m.newID())
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			b.destroy(m.pool)
		}
	}()
	if err := m.launchOrCold(fn, b); err != nil {
		return nil, err
	}
	if err := b.awaitSetUp(m.cfg.StartTimeout); err != nil {
		return nil, err
	}
	return b, nil
}

// awaitSetUp waits up to timeout for b's process, just launched, to be set up and waiting
// for its first event. By then the process is in its cgroup, so destroying b kills it.
func (b *box) awaitSetUp(timeout time.Duration) error {
	r, err := b.receive(time.Now().Add(timeout))
	if err != nil {
		return fmt.Errorf("sandbox: set-up: %w", err)
	}
	if !r.Waiting {
		return fmt.Errorf("%w: sandbox replied before its first event", ErrFrame)
	}
	return nil
}
