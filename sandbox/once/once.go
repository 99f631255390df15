// Package once runs one command of an image once, in a sandbox, without containerd: the
// "container / sandbox" box at the top of the read path in docs/DESIGN.md, for `obd convert
// --record-trace`, which runs a converted image's own command on a bdd device to record what
// its start reads. Package sandbox runs functions in a python runtime; this runs whatever
// command an image config names.
//
// The image's root filesystem (a read-only mount) gets an overlay with a scratch upper
// directory, so the command may write as in a container while the image stays as it is. The
// command runs in new mount, PID, UTS, IPC and network namespaces (no network: loopback is
// down), with the overlay as its root (pivot_root: none of the host's mounts is left in its
// namespace), a fresh /proc and a /dev holding only null, zero, full, random, urandom and tty
// from the host, as the image config's user (root when it names none), and with the
// capabilities a container runtime grants by default less CAP_MKNOD. That is a container's
// confinement without cgroups, user namespace or seccomp: run images you would run with a
// container runtime.
//
// The process that enters the sandbox is the calling program itself, re-executed under the
// name in initArg0; this package's init function takes over such a process, so any program
// linking the package can use Run.
package once

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/moby/sys/user"
	"github.com/obdproject/obd/internal/deathsig"
	"golang.org/x/sys/unix"
)

// Command is one run of an image's command.
type Command struct {
	// Root is the image's root filesystem, a directory no one writes to while the command
	// runs; it is not changed.
	Root string
	// Args are the command and its arguments; a command without a slash is looked up in the
	// PATH of Env inside Root.
	Args []string
	// Env is the environment, as an image config's Env; PATH defaults to DefaultPath.
	Env []string
	// Dir is the working directory inside Root; "/" when empty.
	Dir string
	// User is who runs the command, as an image config says it: "", "uid", "uid:gid",
	// "name", "name:group"; names are looked up in Root's /etc/passwd and /etc/group.
	User string
	// Scratch is an empty directory for the overlay's upper and work directories and its
	// mount; what the command wrote is removed with it when Run returns.
	Scratch string
	// Output receives the command's standard output and error as they come; nil discards
	// them (ExitError keeps their end either way).
	Output io.Writer
}

// DefaultPath is the PATH of a command whose environment has none (containerd's default).
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// ExitError is Run's error for a command that did not exit with status 0.
type ExitError struct {
	Code   int    // exit status; -1 when a signal ended it
	Signal string // the signal that ended it, if one did
	// Output is the end of what the command wrote (at most outputTail bytes).
	Output []byte
}

func (e *ExitError) Error() string {
	how := fmt.Sprintf("exited with status %d", e.Code)
	if e.Signal != "" {
		how = "was killed by " + e.Signal
	}
	if len(bytes.TrimSpace(e.Output)) == 0 {
		return "the command " + how + " (it wrote nothing)"
	}
	return fmt.Sprintf("the command %s; the end of its output:\n%s", how, bytes.TrimRight(e.Output, "\n"))
}

// outputTail is how much of a failed command's output ExitError keeps.
const outputTail = 8 << 10

// Run runs c until it exits or ctx ends (then it is killed, with everything it started, and
// Run returns an error wrapping ctx's). A command that exits non-zero gives an *ExitError.
func Run(ctx context.Context, c Command) (err error) {
	if len(c.Args) == 0 || c.Args[0] == "" {
		return errors.New("once: no command to run")
	}
	if c.Dir == "" {
		c.Dir = "/"
	}
	if !filepath.IsAbs(c.Dir) {
		return fmt.Errorf("once: working directory %q is not absolute", c.Dir)
	}
	if !hasVar(c.Env, "PATH") {
		c.Env = append(append([]string(nil), c.Env...), "PATH="+DefaultPath)
	}
	who, err := lookupUser(c.Root, c.User)
	if err != nil {
		return err
	}
	root, cleanup, err := mountOverlay(c.Root, c.Scratch)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, cleanup()) }()

	spec, err := json.Marshal(initSpec{Root: root, Dir: c.Dir, Args: c.Args, Env: c.Env,
		UID: who.Uid, GID: who.Gid, Groups: who.Sgids})
	if err != nil {
		return fmt.Errorf("once: %w", err)
	}
	tail := &tailBuffer{max: outputTail}
	var out io.Writer = tail
	if c.Output != nil {
		out = io.MultiWriter(tail, c.Output)
	}
	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Args = []string{initArg0, string(spec)}
	cmd.Env = []string{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWNET,
		Pdeathsig:  syscall.SIGKILL,
	}
	// Killing the command, PID 1 of its namespace, kills everything it started; what is left
	// holding its output goes after this.
	cmd.WaitDelay = 5 * time.Second
	if err = deathsig.Start(cmd); err == nil {
		err = cmd.Wait()
	}
	if ctx.Err() != nil {
		return fmt.Errorf("once: %s: %w", c.Args[0], ctx.Err())
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		e := &ExitError{Code: exit.ExitCode(), Output: tail.bytes()}
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = ws.Signal().String()
		}
		return e
	}
	if err != nil {
		return fmt.Errorf("once: run %s: %w", c.Args[0], err)
	}
	return nil
}

func hasVar(env []string, name string) bool {
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k == name {
			return true
		}
	}
	return false
}

// maxUserDB bounds what is read of an image's /etc/passwd and /etc/group.
const maxUserDB = 4 << 20

// lookupUser resolves an image config's user against the image's own user databases, read
// inside root (a symbolic link in the image cannot point them at the host's files).
func lookupUser(root, spec string) (*user.ExecUser, error) {
	open := func(path string) (io.Reader, func()) {
		f, err := openInRoot(root, path)
		if err != nil {
			return nil, func() {}
		}
		return io.LimitReader(f, maxUserDB), func() { f.Close() }
	}
	passwd, closePasswd := open("etc/passwd")
	defer closePasswd()
	group, closeGroup := open("etc/group")
	defer closeGroup()
	who, err := user.GetExecUser(spec, &user.ExecUser{Home: "/"}, passwd, group)
	if err != nil {
		return nil, fmt.Errorf("once: user %q of the image: %w", spec, err)
	}
	return who, nil
}

// openInRoot opens path for reading as if root were "/".
func openInRoot(root, path string) (*os.File, error) {
	rootFD, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(rootFD)
	fd, err := unix.Openat2(rootFD, path, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NONBLOCK,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

// mountOverlay mounts an overlay of lower with a writable upper in scratch and returns where,
// and what unmounts it and empties scratch.
func mountOverlay(lower, scratch string) (string, func() error, error) {
	upper, work, root := filepath.Join(scratch, "upper"), filepath.Join(scratch, "work"), filepath.Join(scratch, "root")
	for _, d := range []string{upper, work, root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", nil, fmt.Errorf("once: %w", err)
		}
	}
	for _, p := range []string{lower, upper, work} {
		if strings.ContainsAny(p, ",:") {
			return "", nil, fmt.Errorf("once: overlay directory %q has a ',' or ':'", p)
		}
	}
	options := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", root, "overlay", unix.MS_NOSUID, options); err != nil {
		return "", nil, fmt.Errorf("once: mount an overlay on %s: %w", lower, err)
	}
	cleanup := func() error {
		if err := unix.Unmount(root, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("once: unmount %s: %w", root, err)
		}
		return os.RemoveAll(scratch)
	}
	return root, cleanup, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]byte(nil), t.buf...)
}
