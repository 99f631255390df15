package fdkeeper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// defaultTimeout bounds a call whose context has no deadline.
const defaultTimeout = 10 * time.Second

// Client talks to a keeper. Calls are serialised; it is safe for concurrent use.
type Client struct {
	mu   sync.Mutex
	conn *net.UnixConn
}

// Dial connects to the keeper listening at path.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, fmt.Errorf("fdkeeper: dial %s: %w", path, err)
	}
	return &Client{conn: conn.(*net.UnixConn)}, nil
}

// Close closes the connection; the keeper keeps what it holds.
func (c *Client) Close() error { return c.conn.Close() }

// Put hands a duplicate of f to the keeper under key, replacing what it held there.
func (c *Client) Put(ctx context.Context, key string, f *os.File) error {
	_, _, err := c.call(ctx, request{Op: opPut, Key: key}, f)
	return err
}

// Get returns a new descriptor for what the keeper holds under key, or ErrNotFound.
func (c *Client) Get(ctx context.Context, key string) (*os.File, error) {
	_, f, err := c.call(ctx, request{Op: opGet, Key: key}, nil)
	if err == nil && f == nil {
		err = fmt.Errorf("fdkeeper: get %s: keeper sent no descriptor", key)
	}
	return f, err
}

// Drop makes the keeper close what it holds under key; ErrNotFound if nothing.
func (c *Client) Drop(ctx context.Context, key string) error {
	_, _, err := c.call(ctx, request{Op: opDrop, Key: key}, nil)
	return err
}

// Keys lists the keys the keeper holds, sorted.
func (c *Client) Keys(ctx context.Context) ([]string, error) {
	resp, _, err := c.call(ctx, request{Op: opKeys}, nil)
	return resp.Keys, err
}

func (c *Client) call(ctx context.Context, req request, f *os.File) (response, *os.File, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(defaultTimeout)
	}
	c.conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Now()) })
	defer stop()
	msg, _ := json.Marshal(req)
	var rights []byte
	if f != nil {
		rights = unix.UnixRights(int(f.Fd()))
	}
	if _, _, err := c.conn.WriteMsgUnix(msg, rights, nil); err != nil {
		return response{}, nil, fmt.Errorf("fdkeeper: %s %s: %w", req.Op, req.Key, err)
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := c.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return response{}, nil, fmt.Errorf("fdkeeper: %s %s: %w", req.Op, req.Key, err)
	}
	files, err := receivedFiles(oob[:oobn])
	if err != nil {
		return response{}, nil, err
	}
	var resp response
	if err := json.Unmarshal(buf[:n], &resp); err != nil {
		err = fmt.Errorf("fdkeeper: %s %s: bad response: %w", req.Op, req.Key, err)
		for _, f := range files {
			f.Close()
		}
		return response{}, nil, err
	}
	var got *os.File
	for i, f := range files {
		if i == 0 {
			got = f
		} else {
			f.Close()
		}
	}
	switch {
	case resp.NotFound:
		return resp, got, fmt.Errorf("fdkeeper: %s %s: %w", req.Op, req.Key, ErrNotFound)
	case resp.Error != "":
		return resp, got, fmt.Errorf("fdkeeper: %s %s: %w", req.Op, req.Key, errors.New(resp.Error))
	}
	return resp, got, nil
}
