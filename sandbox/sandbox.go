package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/obdproject/obd/checkpoint"
	"github.com/obdproject/obd/sandbox/cgroup"
	"github.com/obdproject/obd/sandbox/sandboxapi"
	"golang.org/x/sys/unix"
)

// Errors of an invocation, for callers (and HTTP status codes) to branch on.
var (
	ErrTimeout  = errors.New("sandbox: handler timed out")
	ErrCrashed  = errors.New("sandbox: sandbox died")
	ErrHandler  = errors.New("sandbox: handler raised an exception")
	ErrNotFound = errors.New("sandbox: no such function")
	ErrExists   = errors.New("sandbox: function already registered")
	ErrClosed   = errors.New("sandbox: manager closed")
)

// box is one live sandbox: its cgroup, root (with its scratch tmpfs) and the channel to its
// runner.
type box struct {
	id    int
	group *cgroup.Group
	root  *mountTree
	conn  net.Conn
	procs []*os.File // the group's cgroup.procs files, until the process has joined
	cmd   *exec.Cmd  // cold sandboxes: the server's child, reaped here
	// restored sandboxes: the process restored from the function's checkpoint, reaped here
	restored *checkpoint.Process
	path     sandboxapi.StartPath // how its process was started, once it has one
	sent     bool                 // the first event is sent and its reply not yet read (start, then call)
	// In the handler cache: idle since idleSince, destroyed at expires. A pre-warmed box has
	// a process set up and waiting for its first event (as a spare), not frozen.
	idleSince, expires time.Time
	prewarmed          bool
}

// reply is a message from the runner.
type reply struct {
	Waiting bool            `json:"waiting"` // set up, waiting for its first event
	Ready   bool            `json:"ready"`   // handler imported
	Result  json.RawMessage `json:"result"`
	Error   *string         `json:"error"`
}

// receive reads one reply, giving up at deadline.
func (b *box) receive(deadline time.Time) (reply, error) {
	var r reply
	b.conn.SetReadDeadline(deadline)
	msg, err := readFrame(b.conn)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return r, ErrTimeout
		}
		return r, fmt.Errorf("%w%s: %w", ErrCrashed, b.deathCause(), err)
	}
	if err := json.Unmarshal(msg, &r); err != nil {
		return r, fmt.Errorf("%w: reply is not JSON: %w", ErrFrame, err)
	}
	if r.Error != nil {
		return r, fmt.Errorf("%w:\n%s", ErrHandler, *r.Error)
	}
	return r, nil
}

// deathCause names a limit the sandbox hit, for error messages.
func (b *box) deathCause() string {
	if b.group.MemoryLimitHit() {
		return " (memory limit reached)"
	}
	return ""
}

// await reads replies until one is not a waiting notice: the ready reply (or the error) of a
// sandbox that got its first event.
func (b *box) await(deadline time.Time) (reply, error) {
	for {
		r, err := b.receive(deadline)
		if err != nil || !r.Waiting {
			return r, err
		}
	}
}

// send sends event to the handler, giving up at deadline.
func (b *box) send(event json.RawMessage, deadline time.Time) error {
	return b.sendRequest(request{Event: event}, deadline)
}

// request is a message to the runner: an event, and for a lent sandbox first the spec of
// the function it now serves.
type request struct {
	Rebind *spec           `json:"rebind,omitempty"`
	Event  json.RawMessage `json:"event"`
}

// sendRequest sends req, giving up at deadline.
func (b *box) sendRequest(req request, deadline time.Time) error {
	if len(req.Event) == 0 {
		req.Event = json.RawMessage("null")
	}
	msg, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("sandbox: event is not JSON: %w", err)
	}
	b.conn.SetWriteDeadline(deadline)
	if err := writeFrame(b.conn, msg); err != nil {
		return fmt.Errorf("%w%s: send event: %w", ErrCrashed, b.deathCause(), err)
	}
	return nil
}

// idle reports whether the sandbox's process is alive and has sent nothing unread: a spare
// whose process died (with its zygote, say) has its channel closed.
func (b *box) idle() bool {
	sc, ok := b.conn.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	quiet := false
	raw.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		quiet = err == nil && n == 0
	})
	return quiet
}

// call sends event to the handler (unless start sent it already) and waits for its result
// until ctx ends.
func (b *box) call(ctx context.Context, event json.RawMessage) (json.RawMessage, error) {
	deadline, _ := ctx.Deadline() // zero: none
	if !b.sent {
		if err := b.send(event, deadline); err != nil {
			return nil, err
		}
	}
	b.sent = false
	stop := context.AfterFunc(ctx, func() { b.conn.SetReadDeadline(time.Now()) })
	defer stop()
	r, err := b.receive(deadline)
	if err != nil {
		return nil, err
	}
	return r.Result, nil
}

func (b *box) closeProcs() {
	closeFiles(b.procs)
	b.procs = nil
}

// destroy kills every process of the sandbox and removes its cgroup (back to the pool),
// root and scratch.
func (b *box) destroy(pool *cgroup.Pool) error {
	var errs []error
	b.closeProcs()
	if b.conn != nil {
		b.conn.Close()
	}
	if b.group != nil {
		if err := pool.Put(b.group); err != nil {
			errs = append(errs, err)
		}
	}
	if b.cmd != nil {
		b.cmd.Wait()
	}
	if b.restored != nil {
		b.restored.Close()
	}
	if err := b.root.close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
