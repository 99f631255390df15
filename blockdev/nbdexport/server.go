// Package nbdexport serves a blockdev.Backend as an NBD export (fixed newstyle
// negotiation, simple replies), one of the transports of the blockdev box in docs/DESIGN.md.
// Any NBD client can use it: libnbd's nbdinfo/nbdcopy/nbdfuse, qemu-img, and the kernel
// NBD driver (package kernelnbd feeds it over a socketpair).
//
// Requests on a connection are served concurrently; flush, FUA, trim and write-zeroes
// are supported. Backend errors are returned to the client as EIO for that request
// only, never as data.
package nbdexport

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"github.com/obdproject/obd/blockdev"
)

// Options configure an export.
type Options struct {
	// Name is the export name clients ask for; the empty (default) name is always
	// accepted as well.
	Name string
	// Description is shown by nbdinfo.
	Description string
	// ReadOnly refuses writes, trims and write-zeroes with EPERM.
	ReadOnly bool
	// MaxInflight bounds the requests served concurrently per connection (default 32).
	MaxInflight int
	// MaxConns bounds the connections Serve serves at once; one past it is closed before
	// negotiation. 0 = unlimited.
	MaxConns int
	// Logger receives backend errors; default slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.MaxInflight <= 0 {
		o.MaxInflight = 32
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Server serves one Backend on a listener until closed.
type Server struct {
	l      net.Listener
	cancel context.CancelFunc
	done   chan struct{}
}

// Listen serves b on a unix socket at path (a stale socket file there is replaced)
// until Close.
func Listen(path string, b blockdev.Backend, opts Options) (*Server, error) {
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("nbdexport: remove stale socket %s: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("nbdexport: listen %s: %w", path, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{l: l, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		_ = Serve(ctx, l, b, opts)
	}()
	return s, nil
}

// Addr is the listening address.
func (s *Server) Addr() net.Addr { return s.l.Addr() }

// Close stops accepting, drops open connections and removes the socket.
func (s *Server) Close() error {
	s.cancel()
	<-s.done
	return nil
}

// Serve accepts connections on l and serves b on each until ctx is done or l fails.
// It closes l and every connection before returning.
func Serve(ctx context.Context, l net.Listener, b blockdev.Backend, opts Options) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	var open atomic.Int32
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("nbdexport: accept: %w", err)
		}
		if opts.MaxConns > 0 && int(open.Load()) >= opts.MaxConns {
			opts.withDefaults().Logger.Warn("nbd connection refused", "export", opts.Name, "err", fmt.Errorf("%d connections open, at most %d", open.Load(), opts.MaxConns))
			conn.Close()
			continue
		}
		open.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer open.Add(-1)
			if err := ServeConn(ctx, conn, b, opts); err != nil {
				opts.withDefaults().Logger.Warn("nbd connection ended", "export", opts.Name, "err", err)
			}
		}()
	}
}

// ServeConn negotiates with the client on conn and serves b until the client
// disconnects, ctx is done or the client breaks the protocol (ErrProtocol). It closes
// conn before returning.
func ServeConn(ctx context.Context, conn net.Conn, b blockdev.Backend, opts Options) error {
	opts = opts.withDefaults()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	c := &connection{
		conn: conn,
		r:    bufio.NewReaderSize(conn, 128<<10),
		b:    blockdev.Guard(b), // a panic fails its request alone
		opts: opts,
		sem:  make(chan struct{}, opts.MaxInflight),
	}
	transmit, err := c.negotiate()
	if err != nil || !transmit {
		return err
	}
	err = c.transmit()
	c.inflight.Wait()
	if errors.Is(err, io.EOF) || ctx.Err() != nil {
		return nil
	}
	return err
}

type connection struct {
	conn net.Conn
	r    *bufio.Reader
	b    blockdev.Backend
	opts Options

	sem      chan struct{}
	inflight sync.WaitGroup
	writeMu  sync.Mutex
}

// TransmissionFlags are the NBD transmission flags an export advertises: flush and
// multi-conn always; FUA, trim and write-zeroes when writable. Package kernelnbd
// hands them to the kernel, which go-nbd's client does not.
func TransmissionFlags(readOnly bool) uint16 {
	f := uint16(flagHasFlags | flagSendFlush | flagCanMultiConn)
	if readOnly {
		return f | flagReadOnly
	}
	return f | flagSendFUA | flagSendTrim | flagSendWriteZeros
}

func (c *connection) transmissionFlags() uint16 { return TransmissionFlags(c.opts.ReadOnly) }

func (c *connection) knownExport(name string) bool {
	return name == "" || name == c.opts.Name
}

// negotiate runs the handshake and option haggling; it reports whether the client
// entered the transmission phase.
func (c *connection) negotiate() (bool, error) {
	hello := make([]byte, 18)
	binary.BigEndian.PutUint64(hello[0:], magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicOption)
	binary.BigEndian.PutUint16(hello[16:], handshakeFixedNewstyle|handshakeNoZeroes)
	if _, err := c.conn.Write(hello); err != nil {
		return false, fmt.Errorf("nbdexport: handshake: %w", err)
	}
	var clientFlags uint32
	if err := binary.Read(c.r, binary.BigEndian, &clientFlags); err != nil {
		return false, fmt.Errorf("nbdexport: client flags: %w", err)
	}
	for {
		var hdr [16]byte
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			return false, fmt.Errorf("nbdexport: option header: %w", err)
		}
		if m := binary.BigEndian.Uint64(hdr[0:8]); m != magicOption {
			return false, fmt.Errorf("%w: option magic %#x", ErrProtocol, m)
		}
		opt := binary.BigEndian.Uint32(hdr[8:12])
		n := binary.BigEndian.Uint32(hdr[12:16])
		if n > maxOptionLen {
			return false, fmt.Errorf("%w: option %d of %d bytes", ErrProtocol, opt, n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.r, data); err != nil {
			return false, fmt.Errorf("nbdexport: option %d data: %w", opt, err)
		}
		switch opt {
		case optExportName:
			if !c.knownExport(string(data)) {
				return false, fmt.Errorf("%w: unknown export %q", ErrProtocol, data)
			}
			reply := make([]byte, 10, 134)
			binary.BigEndian.PutUint64(reply[0:], uint64(c.b.Size()))
			binary.BigEndian.PutUint16(reply[8:], c.transmissionFlags())
			if clientFlags&handshakeNoZeroes == 0 {
				reply = reply[:134]
			}
			_, err := c.conn.Write(reply)
			return err == nil, err
		case optAbort:
			return false, c.optReply(opt, repAck, nil)
		case optList:
			if n != 0 {
				if err := c.optReply(opt, repErrInval, nil); err != nil {
					return false, err
				}
				continue
			}
			entry := binary.BigEndian.AppendUint32(nil, uint32(len(c.opts.Name)))
			if err := c.optReply(opt, repServer, append(entry, c.opts.Name...)); err != nil {
				return false, err
			}
			if err := c.optReply(opt, repAck, nil); err != nil {
				return false, err
			}
		case optInfo, optGo:
			ok, err := c.info(opt, data)
			if err != nil {
				return false, err
			}
			if ok && opt == optGo {
				return true, nil
			}
		default:
			if err := c.optReply(opt, repErrUnsup, nil); err != nil {
				return false, err
			}
		}
	}
}

// info answers NBD_OPT_INFO/NBD_OPT_GO; it reports whether the export was granted.
func (c *connection) info(opt uint32, data []byte) (bool, error) {
	req, err := parseInfoRequest(data)
	if err != nil {
		return false, c.optReply(opt, repErrInval, nil)
	}
	if !c.knownExport(req.name) {
		return false, c.optReply(opt, repErrUnkown, nil)
	}
	export := binary.BigEndian.AppendUint16(nil, infoExport)
	export = binary.BigEndian.AppendUint64(export, uint64(c.b.Size()))
	export = binary.BigEndian.AppendUint16(export, c.transmissionFlags())
	if err := c.optReply(opt, repInfo, export); err != nil {
		return false, err
	}
	// Block size is sent unasked: it imposes no constraint (minimum 1) and some
	// clients, go-nbd's kernel client among them, rely on it.
	sizes := binary.BigEndian.AppendUint16(nil, infoBlockSize)
	sizes = binary.BigEndian.AppendUint32(sizes, 1)
	sizes = binary.BigEndian.AppendUint32(sizes, 4096)
	sizes = binary.BigEndian.AppendUint32(sizes, maxPayload)
	if err := c.optReply(opt, repInfo, sizes); err != nil {
		return false, err
	}
	for _, kind := range req.infos {
		var payload []byte
		switch kind {
		case infoName:
			payload = append(binary.BigEndian.AppendUint16(nil, infoName), c.opts.Name...)
		case infoDescription:
			payload = append(binary.BigEndian.AppendUint16(nil, infoDescription), c.opts.Description...)
		default:
			continue
		}
		if err := c.optReply(opt, repInfo, payload); err != nil {
			return false, err
		}
	}
	return true, c.optReply(opt, repAck, nil)
}

func (c *connection) optReply(opt, typ uint32, data []byte) error {
	hdr := make([]byte, 20, 20+len(data))
	binary.BigEndian.PutUint64(hdr[0:], magicOptReply)
	binary.BigEndian.PutUint32(hdr[8:], opt)
	binary.BigEndian.PutUint32(hdr[12:], typ)
	binary.BigEndian.PutUint32(hdr[16:], uint32(len(data)))
	if _, err := c.conn.Write(append(hdr, data...)); err != nil {
		return fmt.Errorf("nbdexport: reply to option %d: %w", opt, err)
	}
	return nil
}

// transmit reads requests and serves each on its own goroutine, at most MaxInflight
// at a time. Write payloads are read here, in order, before the request is handed off.
func (c *connection) transmit() error {
	var hdr [requestHeaderLen]byte
	for {
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			return err
		}
		req, err := parseRequest(hdr[:])
		if err != nil {
			return err
		}
		var payload []byte
		if req.typ == cmdWrite {
			if req.length > maxPayload {
				return fmt.Errorf("%w: write of %d bytes", ErrProtocol, req.length)
			}
			payload = make([]byte, req.length)
			if _, err := io.ReadFull(c.r, payload); err != nil {
				return fmt.Errorf("nbdexport: write payload: %w", err)
			}
		}
		if req.typ == cmdDisconnect {
			c.inflight.Wait()
			if !c.opts.ReadOnly {
				if err := c.b.Sync(); err != nil {
					c.opts.Logger.Error("nbd sync on disconnect failed", "export", c.opts.Name, "err", err)
				}
			}
			return io.EOF
		}
		c.sem <- struct{}{}
		c.inflight.Add(1)
		go func() {
			defer func() { <-c.sem; c.inflight.Done() }()
			var buf []byte
			if req.typ == cmdRead && req.length <= pooledReadLen {
				p := readBuffers.Get().(*[]byte)
				defer readBuffers.Put(p)
				buf = (*p)[:req.length]
			}
			var err error
			defer func() {
				if err != nil { // the server's own code panicked: fail the request alone
					c.opts.Logger.Error("nbd request failed", "export", c.opts.Name, "err", err)
					c.reply(req.handle, errIO, nil)
				}
			}()
			defer blockdev.Recovered(&err, fmt.Sprintf("nbd command %d", req.typ))
			errno, data := c.serve(req, payload, buf)
			c.reply(req.handle, errno, data)
		}()
	}
}

// pooledReadLen is the largest read served from readBuffers.
const pooledReadLen = 256 << 10

var readBuffers = sync.Pool{New: func() any { b := make([]byte, pooledReadLen); return &b }}

// serve executes one request and returns the NBD error number and read data. A read
// goes into buf when it is not nil.
func (c *connection) serve(req request, payload, buf []byte) (uint32, []byte) {
	size := uint64(c.b.Size())
	end := req.offset + uint64(req.length)
	if end < req.offset || end > size {
		if req.typ == cmdWrite || req.typ == cmdWriteZeroes {
			return errNoSpace, nil
		}
		return errInval, nil
	}
	writes := req.typ == cmdWrite || req.typ == cmdTrim || req.typ == cmdWriteZeroes
	if writes && c.opts.ReadOnly {
		return errPerm, nil
	}
	off, n := int64(req.offset), int64(req.length)
	var err error
	switch req.typ {
	case cmdRead:
		if req.length > maxPayload {
			return errInval, nil
		}
		data := buf
		if data == nil {
			data = make([]byte, n)
		}
		got, rerr := c.b.ReadAt(data, off)
		if rerr != nil && !(errors.Is(rerr, io.EOF) && int64(got) == n) {
			c.logFailure("read", off, n, rerr)
			return errIO, nil
		}
		return 0, data
	case cmdWrite:
		_, err = c.b.WriteAt(payload, off)
	case cmdFlush:
		err = c.b.Sync()
	case cmdTrim:
		err = c.b.Discard(off, n)
	case cmdWriteZeroes:
		if req.flags&cmdFlagNoHole != 0 {
			err = c.writeZeroes(off, n)
		} else {
			err = c.b.Discard(off, n)
		}
	default:
		return errInval, nil
	}
	if err == nil && writes && req.flags&cmdFlagFUA != 0 {
		err = c.b.Sync()
	}
	if errors.Is(err, blockdev.ErrReadOnly) {
		return errPerm, nil
	}
	if err != nil {
		c.logFailure(commandName(req.typ), off, n, err)
		return errIO, nil
	}
	return 0, nil
}

// writeZeroes writes real zeros (the client asked for no hole) in bounded chunks: a
// request may cover up to 4 GiB.
func (c *connection) writeZeroes(off, n int64) error {
	zeros := make([]byte, min(n, 1<<20))
	for n > 0 {
		chunk := min(n, int64(len(zeros)))
		if _, err := c.b.WriteAt(zeros[:chunk], off); err != nil {
			return err
		}
		off, n = off+chunk, n-chunk
	}
	return nil
}

func (c *connection) logFailure(op string, off, n int64, err error) {
	c.opts.Logger.Error("nbd backend error", "export", c.opts.Name, "op", op, "offset", off, "length", n, "err", err)
}

func (c *connection) reply(handle uint64, errno uint32, data []byte) {
	var hdr [16]byte
	binary.BigEndian.PutUint32(hdr[0:], magicSimpleRepl)
	binary.BigEndian.PutUint32(hdr[4:], errno)
	binary.BigEndian.PutUint64(hdr[8:], handle)
	bufs := net.Buffers{hdr[:], data}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if _, err := bufs.WriteTo(c.conn); err != nil {
		// The reader notices the broken connection and ends the session.
		c.conn.Close()
	}
}

func commandName(typ uint16) string {
	switch typ {
	case cmdWrite:
		return "write"
	case cmdFlush:
		return "flush"
	case cmdTrim:
		return "trim"
	case cmdWriteZeroes:
		return "write-zeroes"
	}
	return fmt.Sprintf("command %d", typ)
}
