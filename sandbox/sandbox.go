package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"time"

	"github.com/obdproject/obd/sandbox/cgroup"
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

// StartPath says how the sandbox that served an invocation was obtained.
type StartPath string

const (
	Cold StartPath = "cold" // new process started by the server
	Warm StartPath = "warm" // forked from a zygote
	Hot  StartPath = "hot"  // thawed from the handler cache
)

// box is one live sandbox: its cgroup, root mounts, scratch dir and the channel to its
// runner.
type box struct {
	dir      string // state dir of the sandbox: root/ and scratch/
	group    *cgroup.Group
	root     *rootMount
	conn     net.Conn
	procs    []*os.File // the group's cgroup.procs files, until the process has joined
	cmd      *exec.Cmd  // cold sandboxes: the server's child, reaped here
	lastUsed time.Time
}

// reply is a message from the runner.
type reply struct {
	Ready  bool            `json:"ready"`
	Result json.RawMessage `json:"result"`
	Error  *string         `json:"error"`
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

// call sends event to the handler and waits for its result until ctx ends.
func (b *box) call(ctx context.Context, event json.RawMessage) (json.RawMessage, error) {
	if len(event) == 0 {
		event = json.RawMessage("null")
	}
	msg, err := json.Marshal(struct {
		Event json.RawMessage `json:"event"`
	}{event})
	if err != nil {
		return nil, fmt.Errorf("sandbox: event is not JSON: %w", err)
	}
	deadline, _ := ctx.Deadline() // zero: none
	b.conn.SetWriteDeadline(deadline)
	if err := writeFrame(b.conn, msg); err != nil {
		return nil, fmt.Errorf("%w%s: send event: %w", ErrCrashed, b.deathCause(), err)
	}
	stop := context.AfterFunc(ctx, func() { b.conn.SetReadDeadline(time.Now()) })
	defer stop()
	r, err := b.receive(deadline)
	if err != nil {
		return nil, err
	}
	b.lastUsed = time.Now()
	return r.Result, nil
}

func (b *box) closeProcs() {
	for _, f := range b.procs {
		f.Close()
	}
	b.procs = nil
}

// destroy kills every process of the sandbox and removes its cgroup (back to the pool),
// mounts and scratch dir.
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
	if b.root != nil {
		if err := b.root.unmount(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(b.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
