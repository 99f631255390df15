package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
)

// stderrKeep is how much of a handler's stderr a Process keeps (the tail).
const stderrKeep = 64 << 10

// Spec says how to start a handler.
type Spec struct {
	// Path is the program; Args its argv (Args[0] included).
	Path string
	Args []string
	// Dir is its working directory ("" = the caller's); Env its environment.
	Dir string
	Env []string
	// Root, when set, confines the handler the way package sandbox confines one: it runs
	// as nobody of a user namespace (root's, mapping UIDBase.. on the host), no
	// capabilities, no_new_privs, in new mount, network, IPC and UTS namespaces besides the
	// PID one, with Root attached as its mount namespace's root (pivot_root; the host's tree
	// is not reachable) and a /proc of its PID namespace; Path is inside Root, Dir is /.
	// Unlike a sandbox's detached tree, this is a tree CRIU can dump (docs/CHECKPOINT.md).
	// Root's path must be searchable by the namespace's root (host uid UIDBase, no
	// capability over the host's files): every directory above it needs o+x.
	Root    string
	UIDBase int
	// For a confined handler: Binds are host directories bound read-only into Root (not
	// part of a checkpoint: RestoreOptions.Binds gives them again); Hostname its UTS name;
	// Rlimits [resource, value] pairs set as soft and hard limits; Filter a seccomp program
	// (struct sock_filter array) loaded last before the exec, so the handler runs under it
	// from its first instruction.
	Binds    []Bind
	Hostname string
	Rlimits  [][2]uint64
	Filter   []byte
}

// Bind is a host directory (Source) bound read-only, nosuid and nodev at Target, an
// absolute path that exists in a confined handler's root.
type Bind struct {
	Source, Target string
}

// Process is a handler: PID 1 of its own PID namespace, leader of its own session, with its
// stdin, stdout and stderr being pipes to the caller. Requests go to Stdin, replies come on
// Stdout; stderr is kept (its last 64 KiB) for Stderr.
type Process struct {
	// Pid is its PID in the caller's namespace.
	Pid    int
	Stdin  *os.File
	Stdout *os.File

	proc    *os.Process
	stderr  *tailBuffer
	drained chan struct{}
	done    chan struct{}
	state   *os.ProcessState
	waitErr error
	// cleanup, when set, runs once the process has exited (a restore's lazy-pages daemon and
	// work dir).
	cleanup   func()
	closeOnce sync.Once
	// work is a restore's work dir (criu's logs, pidfile, lazy-pages socket); "" for Start.
	work string
	// uidBase is the host uid of root in a confined handler's user namespace; 0 when it runs
	// unconfined.
	uidBase int
	// binds are the targets of a confined handler's binds.
	binds []string
}

// childPipes are a handler's three stdio pipes: the ends the child gets and the caller's.
type childPipes struct {
	child  [3]*os.File // stdin read end, stdout write end, stderr write end
	stdin  *os.File
	stdout *os.File
	stderr *os.File
}

func newChildPipes() (*childPipes, error) {
	var p childPipes
	var err error
	closeAll := func() {
		for _, f := range []*os.File{p.child[0], p.child[1], p.child[2], p.stdin, p.stdout, p.stderr} {
			if f != nil {
				f.Close()
			}
		}
	}
	if p.child[0], p.stdin, err = os.Pipe(); err != nil {
		closeAll()
		return nil, fmt.Errorf("checkpoint: pipe: %w", err)
	}
	if p.stdout, p.child[1], err = os.Pipe(); err != nil {
		closeAll()
		return nil, fmt.Errorf("checkpoint: pipe: %w", err)
	}
	if p.stderr, p.child[2], err = os.Pipe(); err != nil {
		closeAll()
		return nil, fmt.Errorf("checkpoint: pipe: %w", err)
	}
	return &p, nil
}

func (p *childPipes) closeChild() {
	for _, f := range p.child {
		f.Close()
	}
}

func (p *childPipes) closeAll() {
	p.closeChild()
	p.stdin.Close()
	p.stdout.Close()
	p.stderr.Close()
}

// Start starts spec as a handler (see Process). Needs root (a new PID namespace).
func Start(spec Spec) (*Process, error) {
	if spec.Path == "" || len(spec.Args) == 0 {
		return nil, errors.New("checkpoint: start: empty Path or Args")
	}
	pipes, err := newChildPipes()
	if err != nil {
		return nil, err
	}
	path, args, dir := spec.Path, spec.Args, spec.Dir
	attr := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Setsid: true}
	var extra []*os.File // a confined handler's bind sources
	if spec.Root != "" {
		if path, args, attr, extra, err = confined(spec); err != nil {
			pipes.closeAll()
			return nil, err
		}
		defer closeFiles(extra)
		dir = "/"
	} else if len(spec.Binds) > 0 || spec.Filter != nil || spec.Hostname != "" || spec.Rlimits != nil {
		pipes.closeAll()
		return nil, errors.New("checkpoint: start: binds, hostname, rlimits and filter need a confined handler (Root)")
	}
	proc, err := os.StartProcess(path, args, &os.ProcAttr{Dir: dir, Env: spec.Env, Files: append(pipes.child[:], extra...), Sys: attr})
	pipes.closeChild()
	if err != nil {
		pipes.closeAll()
		return nil, fmt.Errorf("checkpoint: start %s: %w", spec.Path, err)
	}
	p := newProcess(proc, pipes, nil)
	if spec.Root != "" {
		p.uidBase = spec.UIDBase
		for _, b := range spec.Binds {
			p.binds = append(p.binds, b.Target)
		}
	}
	return p, nil
}

func newProcess(proc *os.Process, pipes *childPipes, cleanup func()) *Process {
	p := &Process{
		Pid:     proc.Pid,
		Stdin:   pipes.stdin,
		Stdout:  pipes.stdout,
		proc:    proc,
		stderr:  &tailBuffer{keep: stderrKeep},
		drained: make(chan struct{}),
		done:    make(chan struct{}),
		cleanup: cleanup,
	}
	go func() {
		defer close(p.drained)
		_, _ = io.Copy(p.stderr, pipes.stderr)
		pipes.stderr.Close()
	}()
	go func() {
		p.state, p.waitErr = proc.Wait()
		if p.cleanup != nil {
			p.cleanup()
		}
		close(p.done)
	}()
	return p
}

// Wait waits for the process to exit and returns how it ended.
func (p *Process) Wait() (*os.ProcessState, error) {
	<-p.done
	return p.state, p.waitErr
}

// Exited is closed when the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.done }

// Kill sends SIGKILL to the process, which ends its whole PID namespace.
func (p *Process) Kill() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.proc.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("checkpoint: kill %d: %w", p.Pid, err)
	}
	return nil
}

// Close kills the process if it still runs, waits for it and closes the caller's pipe ends.
func (p *Process) Close() error {
	err := p.Kill()
	p.closeOnce.Do(func() {
		<-p.done
		p.Stdin.Close()
		p.Stdout.Close()
	})
	return err
}

// Stderr returns the last 64 KiB the process wrote to stderr; once it has exited, all of them.
func (p *Process) Stderr() string {
	select {
	case <-p.done:
		<-p.drained
	default:
	}
	return p.stderr.String()
}

// tailBuffer keeps the last keep bytes written to it.
type tailBuffer struct {
	mu   sync.Mutex
	keep int
	buf  []byte
}

func (b *tailBuffer) Write(data []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, data...)
	if over := len(b.buf) - b.keep; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(data), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
