package fdkeeper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
)

// Server holds descriptors by key for its clients.
type Server struct {
	log  *slog.Logger
	mu   sync.Mutex
	fds  map[string]*os.File
	done chan struct{}
}

// NewServer returns a keeper holding nothing yet; logger may be nil.
func NewServer(logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.Default()
	}
	return &Server{log: logger, fds: map[string]*os.File{}}
}

// Listen creates the keeper's SOCK_SEQPACKET socket at path (replacing a stale one).
func Listen(path string) (*net.UnixListener, error) {
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("fdkeeper: listen %s: %w", path, err)
	}
	return l, nil
}

// Serve answers clients on l until ctx is done, then closes l. The descriptors stay
// held until Close.
func (s *Server) Serve(ctx context.Context, l *net.UnixListener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("fdkeeper: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			connStop := context.AfterFunc(ctx, func() { conn.Close() })
			defer connStop()
			s.serveConn(conn)
		}()
	}
}

// Close releases every held descriptor.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	for k, f := range s.fds {
		err = errors.Join(err, f.Close())
		delete(s.fds, k)
	}
	return err
}

func (s *Server) serveConn(conn *net.UnixConn) {
	buf := make([]byte, maxMessage)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for {
		n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
		if err != nil || n == 0 {
			return
		}
		files, ferr := receivedFiles(oob[:oobn])
		resp, out := s.handle(buf[:n], files, ferr)
		b, _ := json.Marshal(resp)
		var rights []byte
		if out != nil {
			rights = unix.UnixRights(int(out.Fd()))
		}
		_, _, err = conn.WriteMsgUnix(b, rights, nil)
		if out != nil {
			out.Close()
		}
		if err != nil {
			return
		}
	}
}

// handle executes one request. It takes ownership of files; the returned file, if
// any, is a duplicate for the client that the caller closes after sending.
func (s *Server) handle(msg []byte, files []*os.File, ferr error) (response, *os.File) {
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	req, err := parseRequest(msg)
	if err == nil {
		err = ferr
	}
	if err == nil && (req.Op == opPut) != (len(files) == 1) {
		err = fmt.Errorf("fdkeeper: %s with %d descriptors", req.Op, len(files))
	}
	if err != nil {
		closeAll()
		return response{Error: err.Error()}, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch req.Op {
	case opPut:
		if old := s.fds[req.Key]; old != nil {
			old.Close()
		}
		s.fds[req.Key] = files[0]
		s.log.Info("keeping descriptor", "key", req.Key)
	case opGet:
		f := s.fds[req.Key]
		if f == nil {
			return response{Error: ErrNotFound.Error(), NotFound: true}, nil
		}
		dup, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return response{Error: fmt.Sprintf("fdkeeper: dup %s: %v", req.Key, err)}, nil
		}
		return response{}, os.NewFile(uintptr(dup), req.Key)
	case opDrop:
		f := s.fds[req.Key]
		if f == nil {
			return response{Error: ErrNotFound.Error(), NotFound: true}, nil
		}
		f.Close()
		delete(s.fds, req.Key)
		s.log.Info("dropped descriptor", "key", req.Key)
	case opKeys:
		keys := make([]string, 0, len(s.fds))
		for k := range s.fds {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		return response{Keys: keys}, nil
	}
	return response{}, nil
}

// receivedFiles turns SCM_RIGHTS control messages into files.
func receivedFiles(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("fdkeeper: control message: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "received"))
		}
	}
	return files, nil
}
