package fuseloop

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/blockdev"
)

// readerScratch is a reader's buffers: a request (the kernel refuses reads into less
// than maxWrite plus headers), read data, and small replies. Pooled, because readers
// come and go with the load.
type readerScratch struct{ request, data, out []byte }

var readerBuffers = sync.Pool{New: func() any {
	return &readerScratch{request: make([]byte, readBufferLen), data: make([]byte, maxWrite), out: make([]byte, 128)}
}}

// slowRequest is how long a request may be in service before another reader is
// started to serve the requests behind it.
const slowRequest = time.Millisecond

// server answers FUSE requests for one file backed by a Backend. Reader goroutines
// each read a request from the FUSE device and answer it inline; their number follows
// the load (see spawnIfNone).
type server struct {
	// fuse is the FUSE device; holding the *os.File (not just fd) keeps its finalizer
	// from closing the descriptor while the readers use it.
	fuse     *os.File
	fd       int
	b        blockdev.Backend
	readOnly bool
	name     string
	log      *slog.Logger

	wg         sync.WaitGroup
	maxReaders int32
	readers    atomic.Int32 // running reader goroutines
	idle       atomic.Int32 // readers waiting in read(2)
}

// handleInit reads requests until INIT and answers it. It is only called on a fresh
// mount: a resumed connection has long been initialised.
func (s *server) handleInit() error {
	buf := make([]byte, readBufferLen)
	for {
		n, err := unix.Read(s.fd, buf)
		if err != nil {
			if err == unix.EINTR || err == unix.ENOENT {
				continue
			}
			return err
		}
		h, err := parseInHeader(buf[:n])
		if err != nil {
			return err
		}
		if h.opcode != opInit {
			s.reply(h.unique, unix.EIO, nil)
			continue
		}
		out, err := initReply(buf[inHeaderLen:n])
		if err != nil {
			s.reply(h.unique, unix.EPROTO, nil)
			return err
		}
		return s.reply(h.unique, 0, out)
	}
}

// start begins serving with one reader; more are started while requests are slow
// to serve, up to max.
func (s *server) start(max int) {
	s.maxReaders = int32(max)
	s.readers.Add(1)
	s.wg.Add(1)
	go s.loop()
}

// spawnIfNone starts another reader when none is waiting for the next request. It
// runs when a request has been in service for slowRequest: a backend that waits on
// the network must not hold up the requests queued behind it. Fast requests never
// trigger it, and that matters: one thread serving back to back beats several that
// the kernel wakes in turn (measured: 2x the IOPS at queue depth 32 on 2 cores).
func (s *server) spawnIfNone() {
	if s.idle.Load() > 0 {
		return
	}
	for {
		n := s.readers.Load()
		if n >= s.maxReaders {
			return
		}
		if s.readers.CompareAndSwap(n, n+1) {
			s.wg.Add(1)
			go s.loop()
			return
		}
	}
}

// retire reports whether this reader should exit because another one is waiting for
// requests already; it never retires the last reader.
func (s *server) retire() bool {
	if s.idle.Load() == 0 {
		return false
	}
	for {
		n := s.readers.Load()
		if n <= 1 {
			return false
		}
		if s.readers.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

// wait blocks until every reader has returned.
func (s *server) wait() { s.wg.Wait() }

// resend asks the kernel to queue again every request a previous server read but did
// not answer (FUSE_NOTIFY_RESEND, Linux 6.9+). Without it those requests would wait
// forever after a crash.
func (s *server) resend() error {
	var hdr [outHeaderLen]byte
	binary.LittleEndian.PutUint32(hdr[0:], outHeaderLen)
	binary.LittleEndian.PutUint32(hdr[4:], notifyResend)
	_, err := unix.Write(s.fd, hdr[:])
	return err
}

func (s *server) loop() {
	defer s.wg.Done()
	bufs := readerBuffers.Get().(*readerScratch)
	defer readerBuffers.Put(bufs)
	buf, data, out := bufs.request, bufs.data, bufs.out
	slow := time.AfterFunc(time.Hour, s.spawnIfNone)
	slow.Stop()
	defer slow.Stop()
	for {
		s.idle.Add(1)
		n, err := unix.Read(s.fd, buf)
		s.idle.Add(-1)
		switch {
		case err == nil:
		case err == unix.EINTR || err == unix.ENOENT:
			// ENOENT: the request was interrupted before we could read it.
			continue
		case err == unix.ENODEV:
			return // unmounted or aborted
		default:
			s.log.Error("fuse read failed", "device", s.name, "err", err)
			return
		}
		h, err := parseInHeader(buf[:n])
		if err != nil {
			s.log.Error("bad fuse request", "device", s.name, "err", err)
			if n >= inHeaderLen {
				// Answer it anyway, or the caller would wait for ever.
				s.reply(binary.LittleEndian.Uint64(buf[8:]), unix.EIO, nil)
			}
			continue
		}
		slow.Reset(slowRequest)
		s.handleGuarded(h, buf[inHeaderLen:n], data, out)
		slow.Stop()
		if s.retire() {
			return
		}
	}
}

// handleGuarded is handle with a panic turned into EIO for that request: the backend is
// guarded already (blockdev.Guard), this covers the server's own code.
func (s *server) handleGuarded(h inHeader, in, data, out []byte) {
	var err error
	defer func() {
		if err != nil {
			s.fail(h.unique, "request", 0, 0, err)
		}
	}()
	defer blockdev.Recovered(&err, fmt.Sprintf("fuse opcode %d", h.opcode))
	s.handle(h, in, data, out)
}

// handle answers one request. data and out are the reader's scratch buffers.
func (s *server) handle(h inHeader, in, data, out []byte) {
	le := binary.LittleEndian
	switch h.opcode {
	case opForget, opBatchForget, opInterrupt:
		// No reply expected; an interrupted request simply completes.
	case opInit:
		// A second INIT cannot happen on a live connection.
		s.reply(h.unique, unix.EPROTO, nil)
	case opGetattr, opSetattr:
		if h.opcode == opSetattr && len(in) >= 24 && le.Uint32(in[0:])&fattrSize != 0 && int64(le.Uint64(in[16:])) != s.b.Size() {
			s.reply(h.unique, unix.EPERM, nil)
			return
		}
		putAttrOut(out, s.b.Size(), s.readOnly)
		s.reply(h.unique, 0, out[:104])
	case opOpen:
		if len(in) < 8 {
			s.reply(h.unique, unix.EINVAL, nil)
			return
		}
		if s.readOnly && le.Uint32(in[0:])&unix.O_ACCMODE != unix.O_RDONLY {
			s.reply(h.unique, unix.EROFS, nil)
			return
		}
		clear(out[:16])
		le.PutUint32(out[8:], fopenDirectIO|fopenParallelDirectWrites)
		s.reply(h.unique, 0, out[:16])
	case opRead:
		if len(in) < 24 {
			s.reply(h.unique, unix.EINVAL, nil)
			return
		}
		off, size := int64(le.Uint64(in[8:])), int64(le.Uint32(in[16:]))
		s.read(h.unique, off, min(size, maxWrite), data)
	case opWrite:
		if len(in) < writeInLen {
			s.reply(h.unique, unix.EINVAL, nil)
			return
		}
		off, size := int64(le.Uint64(in[8:])), int(le.Uint32(in[16:]))
		payload := in[writeInLen:]
		if size != len(payload) {
			s.reply(h.unique, unix.EINVAL, nil)
			return
		}
		s.write(h.unique, off, payload, out)
	case opFsync, opFlush:
		if err := s.b.Sync(); err != nil {
			s.fail(h.unique, "sync", 0, 0, err)
			return
		}
		s.reply(h.unique, 0, nil)
	case opFallocate:
		s.fallocate(h.unique, in)
	case opRelease:
		s.reply(h.unique, 0, nil)
	case opStatfs:
		clear(out[:80])
		le.PutUint32(out[40:], 4096) // bsize
		le.PutUint32(out[44:], 255)  // namelen
		le.PutUint32(out[48:], 4096) // frsize
		s.reply(h.unique, 0, out[:80])
	case opDestroy:
		s.reply(h.unique, 0, nil)
	default:
		s.reply(h.unique, unix.ENOSYS, nil)
	}
}

func (s *server) read(unique uint64, off, size int64, data []byte) {
	devSize := s.b.Size()
	if off < 0 || off >= devSize {
		s.reply(unique, 0, nil) // end of file
		return
	}
	size = min(size, devSize-off)
	n, err := s.b.ReadAt(data[:size], off)
	if err != nil && !(errors.Is(err, io.EOF) && int64(n) == size) {
		s.fail(unique, "read", off, size, err)
		return
	}
	s.reply(unique, 0, data[:size])
}

func (s *server) write(unique uint64, off int64, p []byte, out []byte) {
	if s.readOnly {
		s.reply(unique, unix.EROFS, nil)
		return
	}
	if off < 0 || off > s.b.Size() || int64(len(p)) > s.b.Size()-off {
		s.reply(unique, unix.ENOSPC, nil)
		return
	}
	if _, err := s.b.WriteAt(p, off); err != nil {
		s.fail(unique, "write", off, int64(len(p)), err)
		return
	}
	clear(out[:8])
	binary.LittleEndian.PutUint32(out, uint32(len(p)))
	s.reply(unique, 0, out[:8])
}

// fallocate serves punch-hole and zero-range (the loop device's discard and
// write-zeroes) by discarding; plain allocation inside the file is a no-op.
func (s *server) fallocate(unique uint64, in []byte) {
	if len(in) < 28 {
		s.reply(unique, unix.EINVAL, nil)
		return
	}
	le := binary.LittleEndian
	off, n, mode := int64(le.Uint64(in[8:])), int64(le.Uint64(in[16:])), le.Uint32(in[24:])
	if s.readOnly {
		s.reply(unique, unix.EROFS, nil)
		return
	}
	if off < 0 || n < 0 || off > s.b.Size() || n > s.b.Size()-off {
		s.reply(unique, unix.EINVAL, nil)
		return
	}
	switch mode &^ fallocKeepSize {
	case 0:
	case fallocPunchHole, fallocZeroRange:
		if err := s.b.Discard(off, n); err != nil {
			s.fail(unique, "discard", off, n, err)
			return
		}
	default:
		s.reply(unique, unix.EOPNOTSUPP, nil)
		return
	}
	s.reply(unique, 0, nil)
}

// fail answers a backend error: EROFS for a refused write (blockdev.ErrReadOnly),
// else EIO, logged. The reader gets an error, never bytes the backend did not vouch for.
func (s *server) fail(unique uint64, op string, off, n int64, err error) {
	if errors.Is(err, blockdev.ErrReadOnly) {
		s.reply(unique, unix.EROFS, nil)
		return
	}
	s.log.Error("backend error", "device", s.name, "op", op, "offset", off, "length", n, "err", err)
	s.reply(unique, unix.EIO, nil)
}

func (s *server) reply(unique uint64, errno unix.Errno, payload []byte) error {
	var hdr [outHeaderLen]byte
	putOutHeader(hdr[:], outHeaderLen+len(payload), int32(errno), unique)
	var err error
	if len(payload) == 0 {
		_, err = unix.Write(s.fd, hdr[:])
	} else {
		_, err = unix.Writev(s.fd, [][]byte{hdr[:], payload})
	}
	// ENOENT: the request was interrupted and is gone; nothing to do.
	if err != nil && err != unix.ENOENT && err != unix.ENODEV {
		s.log.Error("fuse reply failed", "device", s.name, "err", err)
	}
	return err
}
