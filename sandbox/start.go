package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/obdproject/obd/internal/deathsig"
	"github.com/obdproject/obd/sandbox/cgroup"
	"github.com/obdproject/obd/sandbox/sandboxapi"
	"golang.org/x/sys/unix"
)

// nobody is the user handlers run as.
const nobody = 65534

// start gets fn a new sandbox, sends it event as its first request and returns once the
// handler is imported (call reads the result). The sandbox is a spare, set up ahead, when one
// is waiting; else one prepared and started now: forked from a zygote when there is one, cold
// otherwise or when the zygote stopped answering. The path is returned on error too: the one
// the start took, or was to take.
func (m *Manager) start(ctx context.Context, fn *function, event json.RawMessage) (_ *box, _ sandboxapi.StartPath, err error) {
	b := m.takeSpare(fn)
	if b == nil {
		if b, err = m.prepare(fn, m.newID()); err != nil {
			return nil, m.plannedPath(fn), err
		}
	}
	defer func() {
		if err != nil {
			b.destroy(m.pool)
		}
	}()
	if b.conn == nil {
		if err = m.launchOrCold(fn, b); err != nil {
			return nil, b.path, err
		}
	}
	if err = b.begin(ctx, request{Event: event}, b.path); err != nil {
		return nil, b.path, err
	}
	return b, b.path, nil
}

// begin sends req, the first request of b's process (set up or being set up), and waits
// until the handler is imported; call then reads the result. path names the start in errors.
func (b *box) begin(ctx context.Context, req request, path sandboxapi.StartPath) error {
	// The event goes out at once: the sandbox reads it as soon as it is set up, so importing
	// the handler and running it follow without another round trip.
	deadline, _ := ctx.Deadline()
	err := b.sendRequest(req, deadline)
	if err == nil {
		_, err = b.await(deadline)
	}
	if err != nil {
		return fmt.Errorf("sandbox: %s start: %w", path, err)
	}
	b.sent = true
	return nil
}

// plannedPath is the path a new sandbox of fn would take: warm with a zygote, else restored
// from its checkpoint, else cold.
func (m *Manager) plannedPath(fn *function) sandboxapi.StartPath {
	switch {
	case m.zygoteOf(fn) != nil:
		return sandboxapi.Warm
	case fn.ckpt.usable():
		return sandboxapi.Restored
	}
	return sandboxapi.Cold
}

// launchOrCold starts the process of b, a prepared sandbox of fn, from fn's zygote, or with
// none from fn's checkpoint when it has one. A zygote that no longer answers, or a restore
// that fails, does not fail the start: it goes cold, and the zygotes are started again.
func (m *Manager) launchOrCold(fn *function, b *box) error {
	z := m.zygoteOf(fn)
	if z == nil && fn.ckpt.usable() {
		err := m.restore(fn, b)
		if err == nil {
			return nil
		}
		m.log.Warn("restore failed, starting cold", "function", fn.Name, "err", err)
	}
	err := m.launch(fn, b, z)
	if errors.Is(err, errZygoteGone) {
		m.log.Warn("zygote gone, starting cold", "function", fn.Name, "err", err)
		b.conn.Close()
		err = m.launch(fn, b, nil)
		m.reviveZygotes(fn, z)
	}
	return err
}

// prepare makes everything of a sandbox for fn but its process: a cgroup with fn's limits
// (its cgroup.procs files open for the process to join) and a root: a clone of fn's tree
// with a new scratch tmpfs at /tmp. id names its hostname.
func (m *Manager) prepare(fn *function, id int) (_ *box, err error) {
	b := &box{id: id}
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
	if b.root, err = fn.cloneTree(); err != nil {
		return nil, err
	}
	scratch, err := tmpfs(fn.ScratchMB<<20, m.cfg.UIDBase+nobody)
	if err != nil {
		return nil, err
	}
	return b, b.root.attach("tmp", scratch)
}

// launch starts the process of b, a prepared sandbox of fn: forked from z, or cold when z is
// nil. The process joins b's cgroup and root itself; b.conn is its channel.
func (m *Manager) launch(fn *function, b *box, z *zygote) error {
	s := sandboxSpec(fn, b.id)
	s.Cgroups = len(b.procs)
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
		err = z.fork(s, b.root.f, theirs, b.procs)
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

// sandboxSpec is what the runner of sandbox id of fn is told: where fn's code is, its entry
// and its packages' paths.
func sandboxSpec(fn *function, id int) spec {
	s := spec{Dir: "/srv", Entry: fn.Entry, UID: nobody, Hostname: "sandbox-" + strconv.Itoa(id)}
	for _, p := range fn.Packages {
		s.Paths = append(s.Paths, "/opt/"+p)
	}
	return s
}

// startCold starts the process of b as the server's child with spec s, confined (in a network
// namespace of its own). chanFile is the sandbox's end of its channel, procs the
// cgroup.procs files it joins.
func (m *Manager) startCold(b *box, s spec, chanFile *os.File, procs []*os.File) error {
	hostname := s.Hostname
	s.Cgroups, s.Hostname = 0, "" // confine does both
	js, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if b.cmd, err = m.command(confined{root: b.root, files: []*os.File{chanFile}, cgroups: procs, hostname: hostname,
		flags: sandboxFlags, stderr: m.stderr, argv: runnerArgv("cold", string(js))}); err != nil {
		return err
	}
	if err := deathsig.Start(b.cmd); err != nil {
		b.cmd = nil
		return fmt.Errorf("sandbox: start cold sandbox: %w", err)
	}
	return nil
}
