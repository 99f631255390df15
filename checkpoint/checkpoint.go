package checkpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// MetaFile is obd's record beside CRIU's image files: what Restore needs that CRIU's images do
// not say.
const MetaFile = "checkpoint.json"

// metaVersion is the version of MetaFile's format this package writes and reads.
const metaVersion = 1

// maxMetaSize bounds MetaFile: an image may come from a registry.
const maxMetaSize = 64 << 10

// ErrBadImage means a checkpoint directory is not one Dump wrote.
var ErrBadImage = errors.New("checkpoint: bad image")

// ErrLazyConfined: a lazy restore of a confined handler on a node that keeps userfaultfd to
// privileged processes. The restored task creates its userfaultfd inside its user namespace,
// where it holds no capability of the host's, so the kernel allows it only with
// vm.unprivileged_userfaultfd = 1 (criu 4.1 does not use /dev/userfaultfd or
// UFFD_USER_MODE_ONLY).
var ErrLazyConfined = errors.New("checkpoint: a lazy restore of a confined handler needs vm.unprivileged_userfaultfd = 1")

// uffdSysctl says whether unprivileged processes may create a userfaultfd.
const uffdSysctl = "/proc/sys/vm/unprivileged_userfaultfd"

func unprivilegedUFFD() bool {
	b, err := os.ReadFile(uffdSysctl)
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// meta is MetaFile's content.
type meta struct {
	Version int `json:"version"`
	// CRIU is the version of the criu that dumped.
	CRIU string `json:"criu"`
	// Stdio are the identities of the handler's fds 0, 1 and 2 when dumped, as CRIU names
	// them ("pipe:[12345]"), to be replaced by new pipes at restore.
	Stdio [3]string `json:"stdio"`
	// UIDBase is the host uid of root in the user namespace of a handler Start confined
	// (Spec.Root); 0 for an unconfined one. Restore then needs RestoreOptions.Root.
	UIDBase int `json:"uid_base,omitempty"`
	// Binds are the targets of a confined handler's binds (Spec.Binds), left out of the
	// checkpoint: RestoreOptions.Binds gives their sources.
	Binds []string `json:"binds,omitempty"`
}

var pipeID = regexp.MustCompile(`^pipe:\[[0-9]{1,20}\]$`)

// bindKey names bind i among a checkpoint's external mounts.
func bindKey(i int) string { return "obd-bind-" + strconv.Itoa(i) }

// Dump checkpoints p, which Start or Restore made, into dir (created if missing; it must hold no
// earlier checkpoint) and ends it, as criu dump does. The handler should be quiescent, blocked
// reading its next request.
func (c *CRIU) Dump(ctx context.Context, p *Process, dir string) error {
	m := meta{Version: metaVersion, CRIU: c.Version, UIDBase: p.uidBase, Binds: p.binds}
	for fd := range m.Stdio {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", p.Pid, fd))
		if err != nil {
			return fmt.Errorf("checkpoint: dump %d: fd %d: %w", p.Pid, fd, err)
		}
		if !pipeID.MatchString(link) {
			return fmt.Errorf("checkpoint: dump %d: fd %d is %q, not the pipe Start gave it", p.Pid, fd, link)
		}
		m.Stdio[fd] = link
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("checkpoint: dump: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, MetaFile)); err == nil {
		return fmt.Errorf("checkpoint: dump: %s already holds a checkpoint", dir)
	}
	args := []string{"dump", "--tree", strconv.Itoa(p.Pid), "--images-dir", dir}
	if m.UIDBase > 0 {
		// The root is the image's, bound in again at restore; not part of the checkpoint.
		args = append(args, "--external", "mnt[/]:"+rootMountKey)
		// No network lock: the handler's network namespace has nothing to lock (no link
		// out), and a restore uses the lock method the dump recorded whatever it is told,
		// running iptables-restore and ip6tables-restore in the namespace to unlock (about
		// 60 ms of a 90 ms restore).
		args = append(args, "--network-lock", "skip")
		for i, target := range m.Binds {
			args = append(args, "--external", "mnt["+target+"]:"+bindKey(i))
		}
	}
	if err := c.run(ctx, filepath.Join(dir, "dump.log"), nil, args...); err != nil {
		return err
	}
	data, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("checkpoint: dump: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, MetaFile), data, 0o600); err != nil {
		return fmt.Errorf("checkpoint: dump: %w", err)
	}
	if m.UIDBase > 0 {
		// criu restores a confined handler's tree from inside its user namespace, and reads
		// some images there (timens-0.img) as an identity that is neither their owner nor
		// their group (seemingly before the namespace's uid map is in place: it fails
		// intermittently with 0600 files of its root): the images are given to its root
		// (UIDBase on the host) and made readable by others; their path must be searchable.
		if err := chownTree(dir, m.UIDBase); err != nil {
			return fmt.Errorf("checkpoint: dump: %w", err)
		}
	}
	// criu dump has killed the tree; reap it.
	_ = p.Close()
	return nil
}

func readMeta(dir string) (meta, error) {
	var m meta
	f, err := os.Open(filepath.Join(dir, MetaFile))
	if err != nil {
		return m, fmt.Errorf("%w: %v", ErrBadImage, err)
	}
	defer f.Close()
	dec := json.NewDecoder(&limitedReader{f: f, left: maxMetaSize})
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("%w: %s: %v", ErrBadImage, MetaFile, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return m, fmt.Errorf("%w: %s: data after the record", ErrBadImage, MetaFile)
	}
	if m.Version != metaVersion {
		return m, fmt.Errorf("%w: %s: version %d, want %d", ErrBadImage, MetaFile, m.Version, metaVersion)
	}
	if m.UIDBase < 0 || m.UIDBase > 1<<31-userNSSize {
		return m, fmt.Errorf("%w: %s: uid base %d", ErrBadImage, MetaFile, m.UIDBase)
	}
	for fd, id := range m.Stdio {
		if !pipeID.MatchString(id) {
			return m, fmt.Errorf("%w: %s: fd %d is %q, want pipe:[N]", ErrBadImage, MetaFile, fd, id)
		}
	}
	if len(m.Binds) > 0 && m.UIDBase == 0 {
		return m, fmt.Errorf("%w: %s: binds of an unconfined handler", ErrBadImage, MetaFile)
	}
	binds := make([]Bind, len(m.Binds))
	for i, t := range m.Binds {
		binds[i].Target = t
	}
	if err := checkBinds(binds); err != nil {
		return m, fmt.Errorf("%w: %s: %v", ErrBadImage, MetaFile, err)
	}
	return m, nil
}

// chownTree gives dir and the files in it to uid (and the gid of the same number), readable
// by others.
func chownTree(dir string, uid int) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if err := os.Lchown(path, uid, uid); err != nil {
			return err
		}
		if e.Type().IsRegular() {
			if err := os.Chmod(path, 0o644); err != nil {
				return err
			}
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	return os.Lchown(dir, uid, uid)
}

// limitedReader fails a read past left bytes instead of ending the stream there, so an
// oversized file is an error and not a truncated one.
type limitedReader struct {
	f    *os.File
	left int64
}

func (r *limitedReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, fmt.Errorf("over %d bytes", maxMetaSize)
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.f.Read(p)
	r.left -= int64(n)
	return n, err
}

// RestoreOptions tune Restore.
type RestoreOptions struct {
	// LazyPages restores with `criu restore --lazy-pages`: a `criu lazy-pages` daemon serves
	// the process's private memory from the image through userfaultfd, on first touch and in
	// the background, so the process runs before its memory is copied in.
	LazyPages bool
	// LazyPagesTimeout bounds the wait for the lazy-pages daemon to be ready (default 10 s).
	LazyPagesTimeout time.Duration
	// Root is the root filesystem a confined handler (Spec.Root) is restored into: the same
	// image tree it ran on, at any path. Required for such a checkpoint, refused otherwise.
	Root string
	// Binds maps each bind target the checkpoint records (Spec.Binds) to the host directory
	// bound there now; every target needs one.
	Binds map[string]string
}

// Restore restores the handler checkpointed in dir, with new stdio pipes, as a child of the
// caller in a new PID namespace of its own. dir is only read: logs and sockets go to a private
// work directory, removed when the process exits. Restores of one dir may run at the same time.
func (c *CRIU) Restore(ctx context.Context, dir string, opts RestoreOptions) (_ *Process, err error) {
	m, err := readMeta(dir)
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "obd-restore-")
	if err != nil {
		return nil, fmt.Errorf("checkpoint: restore: %w", err)
	}
	var lazy *lazyDaemon
	cleanup := func() {
		if lazy != nil {
			lazy.stop()
		}
		os.RemoveAll(work)
	}
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	args := []string{"restore", "--images-dir", dir, "--work-dir", work, "--restore-detached",
		"--restore-sibling", "--pidfile", filepath.Join(work, "pid")}
	switch {
	case m.UIDBase > 0 && !filepath.IsAbs(opts.Root):
		return nil, fmt.Errorf("checkpoint: restore: %s holds a confined handler: give the absolute path of its root", dir)
	case m.UIDBase == 0 && opts.Root != "":
		return nil, fmt.Errorf("checkpoint: restore: %s holds an unconfined handler: it takes no root", dir)
	case m.UIDBase > 0:
		// --empty-ns net: a new network namespace with nothing in it, as the handler's was
		// at its start (a loopback, down), rather than criu restoring its state with ip and
		// iptables-restore (about 140 ms of a 180 ms restore here). No --network-lock: a
		// restore ignores it and unlocks as the dump locked (Dump passes skip).
		args = append(args, "--root", opts.Root, "--external", "mnt["+rootMountKey+"]:"+opts.Root, "--empty-ns", "net")
		for i, target := range m.Binds {
			src, ok := opts.Binds[target]
			if !ok || !filepath.IsAbs(src) {
				return nil, fmt.Errorf("checkpoint: restore: %s binds %s: give its absolute source", dir, target)
			}
			args = append(args, "--external", "mnt["+bindKey(i)+"]:"+src)
		}
		if opts.LazyPages && !unprivilegedUFFD() {
			return nil, fmt.Errorf("%w (%s is 0)", ErrLazyConfined, uffdSysctl)
		}
	}
	if opts.LazyPages {
		if lazy, err = c.startLazyPages(ctx, dir, work, opts.LazyPagesTimeout); err != nil {
			return nil, err
		}
		args = append(args, "--lazy-pages")
	}
	pipes, err := newChildPipes()
	if err != nil {
		return nil, err
	}
	for fd, id := range m.Stdio {
		// The child's ends are criu's fds 3, 4 and 5 (ExtraFiles).
		args = append(args, "--inherit-fd", fmt.Sprintf("fd[%d]:%s", 3+fd, id))
	}
	err = c.run(ctx, filepath.Join(work, "restore.log"), pipes.child[:], args...)
	pipes.closeChild()
	if err != nil {
		pipes.closeAll()
		return nil, err
	}
	proc, err := restoredProcess(filepath.Join(work, "pid"))
	if err != nil {
		pipes.closeAll()
		return nil, err
	}
	p := newProcess(proc, pipes, cleanup)
	p.work, p.uidBase, p.binds = work, m.UIDBase, m.Binds
	return p, nil
}

// restoredProcess finds the process criu restored as the caller's child from its pidfile.
func restoredProcess(pidfile string) (*os.Process, error) {
	data, err := os.ReadFile(pidfile)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: restore: pidfile: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return nil, fmt.Errorf("checkpoint: restore: pidfile holds %q", data)
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: restore: process %d: %w", pid, err)
	}
	return proc, nil
}
