package blockdev

import (
	"errors"
	"fmt"
	"runtime/debug"
)

// ErrPanic marks an error that was a panic in per-device work: a bug or bytes no parser
// foresaw. It fails that request (or that device) alone; the process goes on serving.
var ErrPanic = errors.New("panic")

// Recovered turns a panic of the calling goroutine into *err, naming what was running and
// where it panicked. Use it as `defer blockdev.Recovered(&err, "read")` in per-device work
// (a transport's request handler, a device's background goroutine), so that one device's
// bad bytes never take down the daemon and every other device with it.
func Recovered(err *error, what string) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%s: %w: %v\n%s", what, ErrPanic, r, debug.Stack())
	}
}

// Guard returns b with every call's panic turned into that call's error (wrapping
// ErrPanic), which the transports answer as an I/O error of that request.
func Guard(b Backend) Backend { return guarded{b} }

type guarded struct{ b Backend }

func (g guarded) ReadAt(p []byte, off int64) (n int, err error) {
	defer Recovered(&err, fmt.Sprintf("read %d bytes at %d", len(p), off))
	return g.b.ReadAt(p, off)
}

func (g guarded) WriteAt(p []byte, off int64) (n int, err error) {
	defer Recovered(&err, fmt.Sprintf("write %d bytes at %d", len(p), off))
	return g.b.WriteAt(p, off)
}

func (g guarded) Size() int64 { return g.b.Size() }

func (g guarded) Sync() (err error) {
	defer Recovered(&err, "sync")
	return g.b.Sync()
}

func (g guarded) Discard(off, n int64) (err error) {
	defer Recovered(&err, fmt.Sprintf("discard %d bytes at %d", n, off))
	return g.b.Discard(off, n)
}
