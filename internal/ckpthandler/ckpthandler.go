// Package ckpthandler speaks the protocol of the function handler package checkpoint's tests
// and the checkpoint/restore start path's tests and benchmarks run
// (checkpoint/testdata/handler.py): one JSON object per line, {"ready": ...} once initialized,
// then one reply per request {"k": N}. It is test infrastructure, outside the read path of
// docs/DESIGN.md, and links no obd package, so package checkpoint's own tests can use it.
package ckpthandler

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

// ReplyTimeout bounds a wait for one reply, so a broken restore fails a test instead of
// hanging it; it is not a performance bound.
const ReplyTimeout = 60 * time.Second

// Script is the handler's path.
func Script() string {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		panic("ckpthandler: cannot locate the module")
	}
	return filepath.Join(filepath.Dir(self), "..", "..", "checkpoint", "testdata", "handler.py")
}

// Reply is one reply of the handler.
type Reply struct {
	Ready  bool    `json:"ready"`
	InitMS float64 `json:"init_ms"`
	K      int     `json:"k"`
	V      string  `json:"v"`
	Served int     `json:"served"`
	Pid    int     `json:"pid"`
}

// Client talks to one handler process over its stdin and stdout.
type Client struct {
	stdin  io.Writer
	stdout *os.File
	r      *bufio.Reader
	stderr func() string // the handler's stderr so far, for errors
}

// New talks to the handler whose stdin and stdout these are; stderr tells what it said.
func New(stdin io.Writer, stdout *os.File, stderr func() string) *Client {
	return &Client{stdin: stdin, stdout: stdout, r: bufio.NewReader(stdout), stderr: stderr}
}

// Read reads one reply.
func (c *Client) Read() (Reply, error) {
	var r Reply
	if err := c.stdout.SetReadDeadline(time.Now().Add(ReplyTimeout)); err != nil {
		return r, err
	}
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		return r, fmt.Errorf("reading a reply: %w (stderr: %s)", err, c.stderr())
	}
	if err := json.Unmarshal(line, &r); err != nil {
		return r, fmt.Errorf("reply %q: %w", line, err)
	}
	return r, nil
}

// Ask sends request k and reads its reply.
func (c *Client) Ask(k int) (Reply, error) {
	if _, err := fmt.Fprintf(c.stdin, "{\"k\": %d}\n", k); err != nil {
		return Reply{}, fmt.Errorf("sending a request: %w", err)
	}
	r, err := c.Read()
	if err == nil && r.K != k {
		err = fmt.Errorf("asked for %d, got a reply for %d", k, r.K)
	}
	return r, err
}
