package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/obdproject/obd/sandbox/cgroup"
)

// Cross-function reuse (Pagurus, ATC'22): a function under a lending policy that has no idle
// sandbox of its own borrows one of another function under the same policy whose sandbox
// already holds its image and imports (covers), instead of starting one. The lent sandbox
// is scrubbed of the lender before the borrower's code runs in it:
//   - by the server, on the frozen sandbox: its scratch /tmp is emptied and a new tmpfs
//     of the borrower's size mounted over it; the borrower's code is mounted over /srv; its
//     cgroup takes the borrower's limits;
//   - by the runner (runner.py, "rebind"): every other process of its PID namespace is
//     killed, every open file descriptor but its channel and stdio pointed at /dev/null, the
//     environment and sys.path reset to what they were before any handler ran, the lender's
//     modules (those loaded from /srv) dropped, and the working directory re-entered; then
//     the borrower's handler is imported.
//
// What stays is the interpreter with the modules it imported, its PID and UTS namespaces
// and the lender's network namespace: code of the lender that altered the interpreter
// itself (a patched standard module, say) is not undone, so lending is for functions that
// trust each other, which they declare by registering under the same reuse policy.

// lend takes, for fn, an idle sandbox of another function that covers it, charging the
// lender's idle time; nil when there is none. Lenders are tried in name order, and a lender
// gives its least recently cached sandbox (keeping its freshest for itself), as the
// simulator lends. m.mu held.
func (m *Manager) lend(fn *function, now time.Time) *box {
	var donors []*function
	for _, d := range m.funcs {
		// A checkpointed function's sandboxes may be restored ones, whose code the server
		// cannot swap: they are not lent, nor is one lent to it.
		if len(d.idle) > 0 && !d.gone && !d.Checkpoint && !fn.Checkpoint && covers(d, fn) {
			donors = append(donors, d)
		}
	}
	if len(donors) == 0 {
		return nil
	}
	d := slices.MinFunc(donors, func(a, b *function) int { return strings.Compare(a.Name, b.Name) })
	b := d.idle[0]
	d.idle = slices.Delete(d.idle, 0, 1)
	d.chargeIdle(b, now)
	d.stats.Lent++
	m.lends++
	return b
}

// borrow makes b, an idle sandbox lent to fn (frozen, or pre-warmed and waiting), fn's:
// scrubbed of its lender, then sent event with fn's spec and fn's handler imported. On error
// b is destroyed.
func (m *Manager) borrow(ctx context.Context, fn *function, b *box, event json.RawMessage) (_ *box, err error) {
	defer func() {
		m.mu.Lock()
		if err != nil {
			m.lendFailures++
		} else {
			m.lendsServed++
		}
		m.mu.Unlock()
		if err != nil {
			b.destroy(m.pool)
		}
	}()
	if err := m.scrub(fn, b); err != nil {
		return nil, fmt.Errorf("sandbox: scrub lent sandbox: %w", err)
	}
	if !b.prewarmed {
		if err := b.group.Thaw(); err != nil {
			return nil, err
		}
	}
	b.prewarmed = false
	s := sandboxSpec(fn, b.id)
	if err := b.begin(ctx, request{Rebind: &s, Event: event}, "borrowed"); err != nil {
		return nil, err
	}
	return b, nil
}

// scrub does the server's part of handing b, frozen or waiting, to fn: its scratch is
// emptied and a new one of fn's size mounted over it, fn's code is mounted over /srv and
// fn's limits are set on its cgroup.
func (m *Manager) scrub(fn *function, b *box) error {
	if err := emptyDir(b.root, "tmp"); err != nil {
		return err
	}
	scratch, err := tmpfs(fn.ScratchMB<<20, m.cfg.UIDBase+nobody)
	if err != nil {
		return err
	}
	if err := b.root.attach("tmp", scratch); err != nil {
		return err
	}
	code, err := cloneTree(fn.Dir, roAttrs)
	if err != nil {
		return err
	}
	if err := b.root.attach("srv", code); err != nil {
		return err
	}
	return b.group.SetLimits(cgroup.Limits{MemoryBytes: fn.MemoryMB << 20, CPUs: fn.CPUs, Pids: fn.Pids})
}

// emptyDir removes everything in dir of tree t, as root, never leaving dir: symlinks are
// removed, not followed.
func emptyDir(t *mountTree, dir string) error {
	root, err := os.OpenRoot("/proc/self/fd/" + strconv.Itoa(t.fd()) + "/" + dir)
	if err != nil {
		return fmt.Errorf("sandbox: open %s: %w", dir, err)
	}
	defer root.Close()
	f, err := root.Open(".")
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := root.RemoveAll(name); err != nil {
			return fmt.Errorf("sandbox: empty %s: %w", dir, err)
		}
	}
	return nil
}
