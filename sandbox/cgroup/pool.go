package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrClosed is returned by Get after Close.
var ErrClosed = errors.New("cgroup: pool closed")

// killTimeout bounds how long returning a group may wait for its processes to die.
const killTimeout = 5 * time.Second

// Pool hands out pre-created groups under one parent group per hierarchy. Safe for concurrent
// use.
type Pool struct {
	root    string
	version Version
	parents []string // the pool's parent group in each hierarchy

	mu     sync.Mutex
	free   []*Group
	all    map[string]*Group
	next   int
	closed bool
}

// NewPool creates parent group name (e.g. "obd-sandbox-1234") under root (normally
// /sys/fs/cgroup) in every hierarchy and pre-creates size groups in it. A leftover parent of
// the same name (from a killed server) is cleaned first.
func NewPool(root, name string, size int) (*Pool, error) {
	v, err := Detect(root)
	if err != nil {
		return nil, err
	}
	if err := RemoveLeftover(root, name); err != nil {
		return nil, err
	}
	p := newPool(root, v, name)
	for _, d := range p.parents {
		if err := os.Mkdir(d, 0o755); err != nil {
			removeTree(p.parents)
			return nil, fmt.Errorf("cgroup: create pool %s: %w", name, err)
		}
	}
	if v == V2 {
		// Children may only use the controllers their parent delegates.
		if err := writeFile(filepath.Join(p.parents[0], "cgroup.subtree_control"), "+memory +cpu +pids"); err != nil {
			removeTree(p.parents)
			return nil, fmt.Errorf("cgroup: enable controllers in %s: %w", name, err)
		}
	}
	if v == V1 {
		if err := p.holdFreezerOn(); err != nil {
			removeTree(p.parents)
			return nil, err
		}
	}
	for i := 0; i < size; i++ {
		g, err := p.create()
		if err != nil {
			p.Close()
			return nil, err
		}
		p.free = append(p.free, g)
	}
	return p, nil
}

// frozenName is the pool's empty v1 freezer group that stays frozen (see holdFreezerOn).
const frozenName = "frozen"

// holdFreezerOn creates an empty group in the v1 freezer hierarchy and freezes it for the
// pool's life. The v1 freezer switches a kernel static key on when the first group on the
// machine starts freezing and off when the last one thaws: each switch patches kernel text
// with IPIs to every CPU. A sandbox's Kill (freeze, kill, thaw) and a hot start (thaw) would
// each flip it whenever no other group is frozen; on 2 cores a freeze+thaw pair took 0.24 ms
// that way and 0.04 ms with a group held frozen, and perf put a third of the server's CPU at
// 250 starts/s in that patching.
func (p *Pool) holdFreezerOn() error {
	d := filepath.Join(p.parents[slices.Index(v1Controllers, "freezer")], frozenName)
	if err := os.Mkdir(d, 0o755); err != nil {
		return fmt.Errorf("cgroup: create %s: %w", d, err)
	}
	if err := writeFile(filepath.Join(d, "freezer.state"), "FROZEN"); err != nil {
		return fmt.Errorf("cgroup: freeze %s: %w", d, err)
	}
	return nil
}

func newPool(root string, v Version, name string) *Pool {
	p := &Pool{root: root, version: v, all: map[string]*Group{}}
	if v == V2 {
		p.parents = []string{filepath.Join(root, name)}
	} else {
		for _, c := range v1Controllers {
			p.parents = append(p.parents, filepath.Join(root, c, name))
		}
	}
	return p
}

// RemoveLeftover kills every process in the pool name under root, left by a server that died
// without closing it (possibly frozen), and removes its groups. No such pool is fine.
func RemoveLeftover(root, name string) error {
	v, err := Detect(root)
	if err != nil {
		return err
	}
	p := newPool(root, v, name)
	// Adopt the groups that exist in the first hierarchy; a group is created in all of them.
	entries, err := os.ReadDir(p.parents[0])
	if errors.Is(err, os.ErrNotExist) {
		return removeTree(p.parents)
	}
	if err != nil {
		return fmt.Errorf("cgroup: leftover %s: %w", name, err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		g := &Group{pool: p, name: e.Name()}
		for _, parent := range p.parents {
			g.dirs = append(g.dirs, filepath.Join(parent, e.Name()))
		}
		p.all[g.name] = g
	}
	if err := p.Close(); err != nil {
		return fmt.Errorf("cgroup: leftover %s: %w", name, err)
	}
	return nil
}

// Pools lists the names of the pools under root whose names start with prefix.
func Pools(root, prefix string) ([]string, error) {
	v, err := Detect(root)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(newPool(root, v, "x").parents[0])
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// SetLimits bounds the pool's parent group, so every group of the pool together stays within
// lim (zero fields: unlimited).
func (p *Pool) SetLimits(lim Limits) error {
	parent := &Group{pool: p, name: "(pool)", dirs: p.parents}
	return parent.SetLimits(lim)
}

// Version is the cgroup layout the pool uses.
func (p *Pool) Version() Version { return p.version }

func (p *Pool) create() (*Group, error) {
	p.next++
	g := &Group{pool: p, name: "sb" + strconv.Itoa(p.next)}
	for _, parent := range p.parents {
		d := filepath.Join(parent, g.name)
		if err := os.Mkdir(d, 0o755); err != nil {
			for _, made := range g.dirs {
				os.Remove(made)
			}
			return nil, fmt.Errorf("cgroup: create %s: %w", d, err)
		}
		g.dirs = append(g.dirs, d)
	}
	p.all[g.name] = g
	return g, nil
}

// Get takes a group from the pool (creating one if the pool is empty) and applies lim.
func (p *Pool) Get(lim Limits) (*Group, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	var g *Group
	if n := len(p.free); n > 0 {
		g, p.free = p.free[n-1], p.free[:n-1]
	} else {
		var err error
		if g, err = p.create(); err != nil {
			p.mu.Unlock()
			return nil, err
		}
	}
	p.mu.Unlock()
	var err error
	if g.oomBase, err = g.oomKills(); err == nil {
		err = g.SetLimits(lim)
	}
	if err != nil {
		p.Put(g)
		return nil, err
	}
	return g, nil
}

// Put kills whatever still runs in g, thaws it, and returns it to the pool. Its limits stay
// until the next Get sets all of them. A group that cannot be emptied is removed from the pool
// and the error returned.
func (p *Pool) Put(g *Group) error {
	err := g.Kill(killTimeout)
	if err == nil {
		err = g.Thaw()
	}
	if err == nil && p.version == V1 {
		// Restart peak accounting so the next user's stats are its own.
		err = g.write("memory", "memory.max_usage_in_bytes", "0")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil || p.closed {
		delete(p.all, g.name)
		for _, d := range g.dirs {
			if rerr := os.Remove(d); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
				err = fmt.Errorf("cgroup %s: %w", g.name, rerr)
			}
		}
		return err
	}
	p.free = append(p.free, g)
	return nil
}

// Free is how many groups wait in the pool.
func (p *Pool) Free() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.free)
}

// Close kills every process in every group of the pool and removes all of them and the
// parents. Groups handed out and not yet returned are killed too.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	groups := make([]*Group, 0, len(p.all))
	for _, g := range p.all {
		groups = append(groups, g)
	}
	p.all = map[string]*Group{}
	p.free = nil
	p.mu.Unlock()
	var errs []error
	for _, g := range groups {
		if err := g.Kill(killTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeTree(p.parents); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeTree removes every group below the given parents, then the parents themselves; a group
// that still holds processes makes it fail. Missing parents are fine.
func removeTree(parents []string) error {
	for _, parent := range parents {
		entries, err := os.ReadDir(parent)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			if err := os.Remove(filepath.Join(parent, e.Name())); err != nil {
				return fmt.Errorf("remove %s (processes left?): %w", filepath.Join(parent, e.Name()), err)
			}
		}
		if err := os.Remove(parent); err != nil {
			return fmt.Errorf("remove %s: %w", parent, err)
		}
	}
	return nil
}
