package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/obdproject/obd/checkpoint"
	"github.com/obdproject/obd/sandbox/sandboxapi"
	"golang.org/x/sys/unix"
)

// Restore starts (Catalyzer): for a function registered with Checkpoint, the manager starts
// one sandbox made to be checkpointed once its modules and handler are imported, dumps it
// with CRIU (package checkpoint) and from then on a start that finds no warm zygote restores
// that dump instead of starting python3 cold. A sandbox's detached mount tree cannot be
// dumped (docs/CHECKPOINT.md), so a checkpointed sandbox is confined by package checkpoint
// instead: the same user namespace mapping, nobody with no capabilities, no_new_privs, the
// sandbox seccomp filter and rlimits, its own PID, network, IPC and UTS namespaces; but a
// mount namespace of its own rooted in the image (pivot_root), with its code at /srv and the
// install cache at /opt bound read-only, a /proc of its PID namespace, no /dev and no scratch
// /tmp. Its channel is its stdin and stdout, pipes CRIU hands back at restore. A restored
// sandbox then joins its cgroup and is served, frozen and cached as any other; it is not lent
// (the server cannot swap the code in its mount namespace).

// CheckpointStore keeps checkpoints beyond one node (Config.Checkpoints):
// sandbox/ckptstart.Store pushes them to the registry as obd layer artifacts of the
// function's image and mounts them through bdd, lazily. A node that finds one restores from
// it instead of making its own. key names a function's checkpoint: its name and a digest of
// everything the checkpointed process depends on (code, entry, imports, packages, uid base,
// criu version), so a changed function never restores an old checkpoint.
type CheckpointStore interface {
	// Get returns a directory holding the checkpoint stored under key for image ref, and
	// its release; "" when there is none.
	Get(ctx context.Context, ref, key string) (dir string, release func() error, err error)
	// Put stores the checkpoint in dir under key for image ref.
	Put(ctx context.Context, ref, key, dir string) error
}

// fnCheckpoint is a function's checkpoint: CRIU's images in dir, once made or found
// (ready closed); err when neither worked. release, when set, gives back a checkpoint the
// store mounted.
type fnCheckpoint struct {
	ready   chan struct{}
	dir     string
	err     error
	release func() error
}

// close removes or releases c, once ready.
func (c *fnCheckpoint) close() error {
	<-c.ready
	if c.release != nil {
		return c.release()
	}
	return os.RemoveAll(c.dir)
}

// usable reports whether c holds a checkpoint to restore. c may be nil.
func (c *fnCheckpoint) usable() bool {
	if c == nil {
		return false
	}
	select {
	case <-c.ready:
		return c.err == nil
	default:
		return false
	}
}

// checkpointBinds are the host directories a checkpointed sandbox of fn has bound, by target.
func (m *Manager) checkpointBinds(fn *function) map[string]string {
	binds := map[string]string{"/srv": fn.Dir}
	if m.cfg.PackagesDir != "" {
		binds["/opt"] = m.cfg.PackagesDir
	}
	return binds
}

// makeCheckpoint gets fn a checkpoint: the store's, when it has one under fn's key; else it
// starts fn's sandbox to be checkpointed, waits until it has imported its modules and
// handler, dumps it into c.dir and stores it. Failure leaves fn with cold starts, logged.
func (m *Manager) makeCheckpoint(fn *function, c *fnCheckpoint) {
	defer m.background.Done()
	defer close(c.ready)
	start := time.Now()
	key, err := m.checkpointKey(fn)
	if err == nil && m.cfg.Checkpoints != nil && m.findCheckpoint(fn, key, c) {
		return
	}
	if err == nil {
		err = m.dumpSandbox(fn, c.dir)
	}
	if c.err = err; err != nil {
		m.log.Warn("checkpoint failed; starts stay cold", "function", fn.Name, "err", err)
		return
	}
	m.log.Info("checkpoint made", "function", fn.Name, "key", key, "took", time.Since(start).Round(time.Millisecond))
	if m.cfg.Checkpoints == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	if err := m.cfg.Checkpoints.Put(ctx, fn.Image, key, c.dir); err != nil {
		m.log.Warn("checkpoint not stored", "function", fn.Name, "key", key, "err", err)
		return
	}
	m.log.Info("checkpoint stored", "function", fn.Name, "key", key, "took", time.Since(start).Round(time.Millisecond))
}

// storeTimeout bounds one exchange with the checkpoint store.
const storeTimeout = 5 * time.Minute

// findCheckpoint looks fn's checkpoint up in the store and takes it into c when found.
func (m *Manager) findCheckpoint(fn *function, key string, c *fnCheckpoint) bool {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	dir, release, err := m.cfg.Checkpoints.Get(ctx, fn.Image, key)
	if err == nil && dir != "" {
		if err = searchable(dir); err != nil {
			release()
		}
	}
	if err != nil {
		m.log.Warn("checkpoint store", "function", fn.Name, "key", key, "err", err)
		return false
	}
	if dir == "" {
		return false
	}
	if _, err := m.checkpointRoot(fn.image); err != nil {
		release()
		m.log.Warn("checkpoint root", "function", fn.Name, "err", err)
		return false
	}
	c.dir, c.release = dir, release
	m.log.Info("checkpoint found in the store", "function", fn.Name, "key", key)
	return true
}

// checkpointKey names fn's checkpoint in the store: fn's name and a digest of what its
// checkpointed process depends on.
func (m *Manager) checkpointKey(fn *function) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "entry %q imports %q packages %q uid-base %d criu %q\n", fn.Entry, fn.Imports, fn.Packages, m.cfg.UIDBase, m.cfg.CRIU.Version)
	err := filepath.WalkDir(fn.Dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == "__pycache__" {
			// Byte code made at registration: it records the source's mtime, which differs
			// between nodes that unpacked the same code.
			return filepath.SkipDir
		}
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(fn.Dir, path)
		fmt.Fprintf(h, "file %q\n", rel)
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(h, f)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("sandbox: checkpoint key of %s: %w", fn.Name, err)
	}
	return fn.Name + "@" + hex.EncodeToString(h.Sum(nil))[:16], nil
}

func (m *Manager) dumpSandbox(fn *function, dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.StartTimeout)
	defer cancel()
	s := sandboxSpec(fn, 0)
	s.Hostname, s.Imports = "sandbox", fn.Imports
	js, err := json.Marshal(s)
	if err != nil {
		return err
	}
	sandboxF, _, _, err := filters()
	if err != nil {
		return err
	}
	root, err := m.checkpointRoot(fn.image)
	if err != nil {
		return fmt.Errorf("sandbox: checkpoint of %s: %w", fn.Name, err)
	}
	binds := m.checkpointBinds(fn)
	// criu restores the mounts as root of the sandbox's user namespace, with no right to
	// search a directory the host's root keeps to itself.
	for _, p := range append(slices.Collect(maps.Values(binds)), root, filepath.Dir(dir)) {
		if err := searchable(p); err != nil {
			return fmt.Errorf("sandbox: checkpoint of %s: %w", fn.Name, err)
		}
	}
	spec := checkpoint.Spec{Path: pythonPath, Args: runnerArgv("checkpoint", string(js)), Env: sandboxEnv(m.poolName),
		Root: root, UIDBase: m.cfg.UIDBase, Hostname: s.Hostname, Filter: filterBytes(sandboxF)}
	for target, src := range binds {
		spec.Binds = append(spec.Binds, checkpoint.Bind{Source: src, Target: target})
	}
	for _, r := range rlimits {
		spec.Rlimits = append(spec.Rlimits, [2]uint64{uint64(r.resource), r.value})
	}
	p, err := checkpoint.Start(spec)
	if err != nil {
		return err
	}
	defer p.Close()
	// Dumped once it reports waiting: set up, its modules and handler imported.
	if err := p.Stdout.SetReadDeadline(time.Now().Add(m.cfg.StartTimeout)); err != nil {
		return err
	}
	msg, err := readFrame(p.Stdout)
	var r reply
	if err == nil {
		err = json.Unmarshal(msg, &r)
	}
	if err != nil || !r.Waiting {
		return fmt.Errorf("sandbox: checkpoint of %s: set-up: %q %v%s", fn.Name, msg, err, stderrTail(p))
	}
	if err := m.cfg.CRIU.Dump(ctx, p, dir); err != nil {
		return fmt.Errorf("sandbox: checkpoint of %s: %w", fn.Name, err)
	}
	return nil
}

// checkpointRoot returns the root of img's checkpointed sandboxes: a read-only, nosuid and
// nodev bind of the image in the server's mount namespace, made on first use. criu restores a
// root from a path and keeps that mount's own flags, so the flags must be on the path's mount
// (without nodev an image's device nodes would open). It goes with the image (image.close),
// or, after a kill, with resetStateDir.
func (m *Manager) checkpointRoot(img *image) (string, error) {
	img.ckptRootOnce.Do(func() {
		dir := filepath.Join(m.cfg.StateDir, "images", "root-"+strconv.Itoa(m.newID()))
		if img.ckptRootErr = os.Mkdir(dir, 0o755); img.ckptRootErr != nil {
			return
		}
		t, err := cloneTree(img.dir, roAttrs)
		if err == nil {
			err = unix.MoveMount(t.fd(), "", unix.AT_FDCWD, dir, unix.MOVE_MOUNT_F_EMPTY_PATH)
			t.close()
		}
		if err != nil {
			os.Remove(dir)
			img.ckptRootErr = fmt.Errorf("sandbox: checkpoint root: %w", err)
			return
		}
		img.ckptRoot = dir
	})
	return img.ckptRoot, img.ckptRootErr
}

// closeCheckpointRoot unmounts and removes img's checkpoint root, if it has one.
func (img *image) closeCheckpointRoot() error {
	if img.ckptRoot == "" {
		return nil
	}
	if err := unix.Unmount(img.ckptRoot, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("sandbox: checkpoint root: %w", err)
	}
	err := os.Remove(img.ckptRoot)
	img.ckptRoot = ""
	return err
}

// searchable checks that every directory above path may be searched by anyone.
func searchable(path string) error {
	for d := filepath.Dir(path); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s is not searchable by the sandboxes' user namespace (mode %v): restores of %s need o+x on it", d, st.Mode().Perm(), path)
		}
		if d == "/" {
			return nil
		}
	}
}

func stderrTail(p *checkpoint.Process) string {
	if s := p.Stderr(); s != "" {
		return ": " + s
	}
	return ""
}

// restore starts the process of b, a prepared sandbox of fn, from fn's checkpoint, and moves
// it into b's cgroup. Its root and scratch go unused: it has its own mount namespace.
func (m *Manager) restore(fn *function, b *box) error {
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.StartTimeout)
	defer cancel()
	p, err := m.cfg.CRIU.Restore(ctx, fn.ckpt.dir, checkpoint.RestoreOptions{Root: fn.image.ckptRoot, Binds: m.checkpointBinds(fn)})
	if err != nil {
		return err
	}
	for _, procs := range b.procs {
		if _, err := procs.WriteString(strconv.Itoa(p.Pid)); err != nil {
			p.Close()
			return fmt.Errorf("sandbox: restored sandbox: join cgroup: %w", err)
		}
	}
	b.closeProcs()
	b.restored, b.conn, b.path = p, &pipeConn{r: p.Stdout, w: p.Stdin}, sandboxapi.Restored
	return nil
}

// pipeConn is a restored sandbox's channel, its stdin and stdout pipes, as a net.Conn.
type pipeConn struct {
	r, w      *os.File
	closeOnce sync.Once
}

func (c *pipeConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *pipeConn) Write(p []byte) (int, error) { return c.w.Write(p) }
func (c *pipeConn) Close() error {
	var err error
	c.closeOnce.Do(func() { err = errors.Join(c.r.Close(), c.w.Close()) })
	return err
}
func (c *pipeConn) LocalAddr() net.Addr                { return pipeAddr{} }
func (c *pipeConn) RemoteAddr() net.Addr               { return pipeAddr{} }
func (c *pipeConn) SetReadDeadline(t time.Time) error  { return c.r.SetReadDeadline(t) }
func (c *pipeConn) SetWriteDeadline(t time.Time) error { return c.w.SetWriteDeadline(t) }
func (c *pipeConn) SetDeadline(t time.Time) error {
	return errors.Join(c.r.SetReadDeadline(t), c.w.SetWriteDeadline(t))
}

// SyscallConn is the read side's: idle polls it for unread replies.
func (c *pipeConn) SyscallConn() (syscall.RawConn, error) { return c.r.SyscallConn() }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "sandbox-pipe" }

// checkpointDir is where function fn's checkpoint number id is made.
func (m *Manager) checkpointDir(fn *function, id int) string {
	return filepath.Join(m.cfg.StateDir, "checkpoints", fn.Name+"-"+strconv.Itoa(id))
}
