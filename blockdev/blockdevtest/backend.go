// Package blockdevtest holds small blockdev.Backend implementations for the transports'
// tests: a plain file (the same bytes a benchmark baseline reads) and a wrapper that
// injects read errors. They stand in for *lsmt.Stack, which has the same methods.
package blockdevtest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/blockdev"
)

// File is a Backend over a plain file of fixed size.
type File struct {
	f    *os.File
	size int64
}

// CreateFile creates (or truncates) a sparse file of size bytes at path.
func CreateFile(path string, size int64) (*File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("blockdevtest: create %s: %w", path, err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("blockdevtest: size %s: %w", path, err)
	}
	return &File{f: f, size: size}, nil
}

// OpenFile opens an existing file as a Backend of its current size.
func OpenFile(path string) (*File, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("blockdevtest: open %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("blockdevtest: stat %s: %w", path, err)
	}
	return &File{f: f, size: st.Size()}, nil
}

// ReadAt reads like os.File.ReadAt: a read that reaches the end returns io.EOF.
func (b *File) ReadAt(p []byte, off int64) (int, error) { return b.f.ReadAt(p, off) }

// WriteAt refuses writes past the end: a block device does not grow.
func (b *File) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > b.size || int64(len(p)) > b.size-off {
		return 0, fmt.Errorf("blockdevtest: write [%d,+%d) beyond size %d", off, len(p), b.size)
	}
	return b.f.WriteAt(p, off)
}

// Size is the file size at open.
func (b *File) Size() int64 { return b.size }

// Sync fsyncs the file.
func (b *File) Sync() error { return b.f.Sync() }

// Discard punches a hole, so the range reads as zeros.
func (b *File) Discard(off, n int64) error {
	if err := unix.Fallocate(int(b.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err != nil {
		return fmt.Errorf("blockdevtest: punch [%d,+%d): %w", off, n, err)
	}
	return nil
}

// Close closes the file.
func (b *File) Close() error { return b.f.Close() }

// ErrInjected is the error Faulty returns.
var ErrInjected = errors.New("blockdevtest: injected read error")

// Faulty wraps a Backend and fails reads that touch [FailOff, FailOff+FailLen) once
// Arm is called: with ErrInjected, or by panicking when Panic is set (as a decoder
// meeting bytes it did not foresee might).
type Faulty struct {
	blockdev.Backend
	FailOff, FailLen int64
	Panic            bool
	armed            atomic.Bool
}

// Arm makes reads of the failing range return ErrInjected.
func (b *Faulty) Arm() { b.armed.Store(true) }

// ReadAt fails with ErrInjected for reads overlapping the failing range once armed.
func (b *Faulty) ReadAt(p []byte, off int64) (int, error) {
	if b.armed.Load() && off < b.FailOff+b.FailLen && off+int64(len(p)) > b.FailOff {
		if b.Panic {
			panic(fmt.Sprintf("blockdevtest: injected panic reading [%d,+%d)", off, len(p)))
		}
		return 0, fmt.Errorf("read [%d,+%d): %w", off, len(p), ErrInjected)
	}
	return b.Backend.ReadAt(p, off)
}

// Mem is a Backend held in memory; safe for concurrent use.
type Mem struct {
	mu   sync.RWMutex
	data []byte
}

// NewMem returns a zeroed in-memory Backend of size bytes.
func NewMem(size int) *Mem { return &Mem{data: make([]byte, size)} }

// ReadAt copies from memory; a read that reaches the end returns io.EOF.
func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off < 0 || off > int64(len(m.data)) {
		return 0, fmt.Errorf("blockdevtest: read at %d beyond size %d", off, len(m.data))
	}
	n := copy(p, m.data[off:])
	if n < len(p) || off+int64(n) == int64(len(m.data)) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt copies into memory; writes past the end fail.
func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off > int64(len(m.data)) || int64(len(p)) > int64(len(m.data))-off {
		return 0, fmt.Errorf("blockdevtest: write [%d,+%d) beyond size %d", off, len(p), len(m.data))
	}
	return copy(m.data[off:], p), nil
}

// Size is the fixed size.
func (m *Mem) Size() int64 { return int64(len(m.data)) }

// Sync has nothing to do.
func (m *Mem) Sync() error { return nil }

// Discard zeroes the range.
func (m *Mem) Discard(off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || n < 0 || off > int64(len(m.data)) || n > int64(len(m.data))-off {
		return fmt.Errorf("blockdevtest: discard [%d,+%d) beyond size %d", off, n, len(m.data))
	}
	clear(m.data[off : off+n])
	return nil
}
