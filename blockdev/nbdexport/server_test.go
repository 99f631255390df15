package nbdexport

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obdproject/obd/blockdev"
	"github.com/obdproject/obd/blockdev/blockdevtest"
	"github.com/obdproject/obd/internal/facility"
)

const testSize = 16 << 20

// shortDir returns a directory whose socket paths fit in sun_path (108 bytes).
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbdx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// newExport serves a fresh file backend of testSize filled with random bytes.
func newExport(t *testing.T, opts Options) (sock string, b *blockdevtest.File, content []byte) {
	t.Helper()
	dir := shortDir(t)
	b, err := blockdevtest.CreateFile(filepath.Join(dir, "backing"), testSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	content = make([]byte, testSize)
	rand.Read(content)
	if _, err := b.WriteAt(content, 0); err != nil {
		t.Fatal(err)
	}
	sock = filepath.Join(dir, "nbd.sock")
	s, err := Listen(sock, b, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return sock, b, content
}

func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		facility.Missing(t, "%s not installed (Debian packages libnbd-bin, qemu-utils): %v", name, err)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func uri(sock string) string { return "nbd+unix:///?socket=" + sock }

func TestNbdinfo(t *testing.T) {
	needTool(t, "nbdinfo")
	for _, ro := range []bool{false, true} {
		sock, _, _ := newExport(t, Options{Name: "dev0", Description: "test device", ReadOnly: ro})
		var info struct {
			Exports []struct {
				Name        string `json:"export-name"`
				Description string `json:"description"`
				Size        int64  `json:"export-size"`
				ReadOnly    bool   `json:"is_read_only"`
				CanTrim     bool   `json:"can_trim"`
				CanZero     bool   `json:"can_zero"`
				CanFlush    bool   `json:"can_flush"`
				CanFUA      bool   `json:"can_fua"`
				CanMulti    bool   `json:"can_multi_conn"`
			} `json:"exports"`
		}
		out := run(t, "nbdinfo", "--json", "nbd+unix:///dev0?socket="+sock)
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatalf("nbdinfo output: %v\n%s", err, out)
		}
		if len(info.Exports) != 1 {
			t.Fatalf("nbdinfo: %d exports\n%s", len(info.Exports), out)
		}
		e := info.Exports[0]
		if e.Name != "dev0" || e.Description != "test device" || e.Size != testSize || e.ReadOnly != ro ||
			!e.CanFlush || !e.CanMulti || e.CanTrim == ro || e.CanZero == ro || e.CanFUA == ro {
			t.Errorf("read-only=%v: nbdinfo reports %+v", ro, e)
		}
		list := run(t, "nbdinfo", "--list", "--json", uri(sock))
		if !strings.Contains(list, `"dev0"`) {
			t.Errorf("nbdinfo --list does not show dev0:\n%s", list)
		}
	}
}

func sha(b []byte) [32]byte { return sha256.Sum256(b) }

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha(b)
}

func TestNbdcopyRoundTrip(t *testing.T) {
	needTool(t, "nbdcopy")
	sock, _, content := newExport(t, Options{})
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	// Four connections with many requests in flight each: exercises concurrency.
	run(t, "nbdcopy", "--connections=4", "--requests=32", "--request-size=65536", uri(sock), out)
	if fileSum(t, out) != sha(content) {
		t.Fatal("nbdcopy from export: checksum differs from backend content")
	}
	in := filepath.Join(dir, "in")
	fresh := make([]byte, testSize)
	rand.Read(fresh)
	if err := os.WriteFile(in, fresh, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "nbdcopy", "--connections=4", "--flush", in, uri(sock))
	run(t, "nbdcopy", uri(sock), out)
	if fileSum(t, out) != sha(fresh) {
		t.Fatal("nbdcopy to export and back: checksum differs")
	}
}

func TestQemuImg(t *testing.T) {
	needTool(t, "qemu-img")
	needTool(t, "qemu-io")
	sock, b, content := newExport(t, Options{})
	out := filepath.Join(t.TempDir(), "img.raw")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri(sock), out)
	if fileSum(t, out) != sha(content) {
		t.Fatal("qemu-img convert: checksum differs from backend content")
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", uri(sock), out)

	// Write, write-zeroes (hole allowed and not), discard and flush through qemu-io.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0xab 1M 64k", "-c", "write -z 2M 128k",
		"-c", "discard 4M 1M", "-c", "aio_write -P 0xcd 8M 4k", "-c", "aio_flush", "-c", "flush", uri(sock))
	got := make([]byte, testSize)
	if _, err := b.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(content)
	copy(want[1<<20:], bytes.Repeat([]byte{0xab}, 64<<10))
	clear(want[2<<20 : 2<<20+128<<10])
	clear(want[4<<20 : 5<<20])
	copy(want[8<<20:], bytes.Repeat([]byte{0xcd}, 4<<10))
	if !bytes.Equal(got, want) {
		t.Fatal("backend content after qemu-io writes/zeroes/discard differs from expectation")
	}
}

func TestNbdfuse(t *testing.T) {
	needTool(t, "nbdfuse")
	needTool(t, "fusermount3")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		facility.Missing(t, "no /dev/fuse: %v", err)
	}
	sock, _, content := newExport(t, Options{})
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	pidfile := filepath.Join(dir, "pid")
	cmd := exec.Command("nbdfuse", "-P", pidfile, mnt+"/disk", "--unix", sock)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		exec.Command("fusermount3", "-u", mnt).Run()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(pidfile); err == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("nbdfuse exited: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdfuse did not become ready\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if fileSum(t, mnt+"/disk") != sha(content) {
		t.Fatal("reading through nbdfuse: checksum differs from backend content")
	}
}

// client is a minimal NBD client for exact protocol assertions.
type client struct {
	conn net.Conn
	size uint64
}

func dial(t *testing.T, sock, name string) *client {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(time.Minute))
	hello := make([]byte, 18)
	if _, err := io.ReadFull(conn, hello); err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint64(hello) != magicNBD || binary.BigEndian.Uint64(hello[8:]) != magicOption {
		t.Fatalf("bad greeting %x", hello)
	}
	msg := binary.BigEndian.AppendUint32(nil, handshakeFixedNewstyle|handshakeNoZeroes)
	msg = binary.BigEndian.AppendUint64(msg, magicOption)
	msg = binary.BigEndian.AppendUint32(msg, optExportName)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(name)))
	msg = append(msg, name...)
	conn.Write(msg)
	var info [10]byte
	if _, err := io.ReadFull(conn, info[:]); err != nil {
		t.Fatal(err)
	}
	return &client{conn: conn, size: binary.BigEndian.Uint64(info[:])}
}

func (c *client) send(typ, flags uint16, handle, off uint64, n uint32, payload []byte) {
	msg := binary.BigEndian.AppendUint32(nil, magicRequest)
	msg = binary.BigEndian.AppendUint16(msg, flags)
	msg = binary.BigEndian.AppendUint16(msg, typ)
	msg = binary.BigEndian.AppendUint64(msg, handle)
	msg = binary.BigEndian.AppendUint64(msg, off)
	msg = binary.BigEndian.AppendUint32(msg, n)
	c.conn.Write(append(msg, payload...))
}

// recv reads one simple reply; readLen is the data length if the reply is to a read.
func (c *client) recv(t *testing.T, readLen func(handle uint64) int) (handle uint64, errno uint32, data []byte) {
	t.Helper()
	var hdr [16]byte
	if _, err := io.ReadFull(c.conn, hdr[:]); err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint32(hdr[:]) != magicSimpleRepl {
		t.Fatalf("bad reply magic %x", hdr)
	}
	handle, errno = binary.BigEndian.Uint64(hdr[8:]), binary.BigEndian.Uint32(hdr[4:])
	if errno == 0 && readLen != nil {
		data = make([]byte, readLen(handle))
		if _, err := io.ReadFull(c.conn, data); err != nil {
			t.Fatal(err)
		}
	}
	return handle, errno, data
}

func TestPipelinedRequests(t *testing.T) {
	sock, _, content := newExport(t, Options{Name: "x", MaxInflight: 8})
	c := dial(t, sock, "x")
	if c.size != testSize {
		t.Fatalf("size %d", c.size)
	}
	const n = 200
	lens := map[uint64]int{}
	for i := range uint64(n) {
		l := int(4096 * (1 + i%16))
		lens[i] = l
		c.send(cmdRead, 0, i, i*65536, uint32(l), nil)
	}
	seen := map[uint64]bool{}
	for range n {
		h, errno, data := c.recv(t, func(h uint64) int { return lens[h] })
		if errno != 0 || seen[h] {
			t.Fatalf("handle %d: errno %d, repeated %v", h, errno, seen[h])
		}
		seen[h] = true
		if !bytes.Equal(data, content[h*65536:h*65536+uint64(lens[h])]) {
			t.Fatalf("handle %d: wrong data", h)
		}
	}
}

func TestErrors(t *testing.T) {
	sock, _, _ := newExport(t, Options{})
	c := dial(t, sock, "")
	cases := []struct {
		name    string
		typ     uint16
		off     uint64
		n       uint32
		payload []byte
		want    uint32
	}{
		{"read past end", cmdRead, testSize - 10, 20, nil, errInval},
		{"write past end", cmdWrite, testSize - 1, 2, []byte{1, 2}, errNoSpace},
		{"offset overflow", cmdTrim, 1<<64 - 1, 2, nil, errInval},
		{"unknown command", 99, 0, 0, nil, errInval},
		{"block status not negotiated", 7, 0, 512, nil, errInval},
	}
	for i, tc := range cases {
		c.send(tc.typ, 0, uint64(i), tc.off, tc.n, tc.payload)
		h, errno, _ := c.recv(t, nil)
		if h != uint64(i) || errno != tc.want {
			t.Errorf("%s: handle %d errno %d, want errno %d", tc.name, h, errno, tc.want)
		}
	}
	c.send(cmdDisconnect, 0, 100, 0, 0, nil)
	if _, err := c.conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("after disconnect: %v, want EOF", err)
	}

	ro, _, _ := newExport(t, Options{ReadOnly: true})
	c = dial(t, ro, "")
	for i, typ := range []uint16{cmdWrite, cmdTrim, cmdWriteZeroes} {
		var payload []byte
		if typ == cmdWrite {
			payload = make([]byte, 512)
		}
		c.send(typ, 0, uint64(i), 0, 512, payload)
		if _, errno, _ := c.recv(t, nil); errno != errPerm {
			t.Errorf("read-only %s: errno %d, want EPERM", commandName(typ), errno)
		}
	}
}

// TestBackendErrorIsEIO: a read the backend fails, with an error or a panic, is that
// request's EIO; the connection goes on serving other reads.
func TestBackendErrorIsEIO(t *testing.T) {
	for _, panics := range []bool{false, true} {
		t.Run(fmt.Sprintf("panic=%v", panics), func(t *testing.T) { testBackendErrorIsEIO(t, panics) })
	}
}

func testBackendErrorIsEIO(t *testing.T, panics bool) {
	dir := shortDir(t)
	f, err := blockdevtest.CreateFile(filepath.Join(dir, "backing"), testSize)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fb := &blockdevtest.Faulty{Backend: f, FailOff: 1 << 20, FailLen: 4096, Panic: panics}
	fb.Arm()
	sock := filepath.Join(dir, "s")
	s, err := Listen(sock, fb, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := dial(t, sock, "")
	c.send(cmdRead, 0, 1, 1<<20-512, 4096, nil)
	c.send(cmdRead, 0, 2, 0, 4096, nil)
	for range 2 {
		h, errno, data := c.recv(t, func(uint64) int { return 4096 })
		switch {
		case h == 1 && errno != errIO:
			t.Errorf("read of failing range: errno %d, want EIO", errno)
		case h == 2 && (errno != 0 || !bytes.Equal(data, make([]byte, 4096))):
			t.Errorf("read of healthy range: errno %d", errno)
		}
	}
}

func TestBadClientsDoNotHang(t *testing.T) {
	sock, _, _ := newExport(t, Options{})
	for name, stream := range map[string][]byte{
		"bad option magic":  append(binary.BigEndian.AppendUint32(nil, 1), bytes.Repeat([]byte{0xff}, 16)...),
		"huge option":       binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(nil, 1), magicOption), optGo), 1<<30),
		"unknown export":    append(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(nil, 1), magicOption), optExportName), 3), "bad"...),
		"truncated at once": {0, 0},
	} {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		conn.Write(stream)
		if name == "truncated at once" {
			conn.(*net.UnixConn).CloseWrite()
		}
		if _, err := io.Copy(io.Discard, conn); err != nil {
			t.Errorf("%s: server did not close the connection: %v", name, err)
		}
		conn.Close()
	}
}

// refusing is a backend that refuses every write as read-only.
type refusing struct{ *blockdevtest.Mem }

func (refusing) WriteAt([]byte, int64) (int, error) { return 0, blockdev.ErrReadOnly }
func (refusing) Discard(int64, int64) error         { return blockdev.ErrReadOnly }

func TestBackendReadOnlyIsEPERM(t *testing.T) {
	sock := filepath.Join(shortDir(t), "s")
	s, err := Listen(sock, refusing{blockdevtest.NewMem(1 << 20)}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := dial(t, sock, "")
	c.send(cmdWrite, 0, 1, 0, 512, make([]byte, 512))
	c.send(cmdTrim, 0, 2, 0, 512, nil)
	for range 2 {
		if h, errno, _ := c.recv(t, nil); errno != errPerm {
			t.Errorf("handle %d: errno %d, want EPERM", h, errno)
		}
	}
}

func TestWriteZeroesNoHoleLarge(t *testing.T) {
	sock, b, _ := newExport(t, Options{})
	c := dial(t, sock, "")
	// 3.5 MiB: more than one chunk, not a multiple of it.
	c.send(cmdWriteZeroes, cmdFlagNoHole|cmdFlagFUA, 1, 1<<20, 7<<19, nil)
	if _, errno, _ := c.recv(t, nil); errno != 0 {
		t.Fatalf("errno %d", errno)
	}
	got := make([]byte, 7<<19)
	b.ReadAt(got, 1<<20)
	if !bytes.Equal(got, make([]byte, len(got))) {
		t.Fatal("range not zeroed")
	}
}

func TestTransmissionFlags(t *testing.T) {
	rw, ro := TransmissionFlags(false), TransmissionFlags(true)
	if rw&flagReadOnly != 0 || rw&(flagSendFlush|flagSendFUA|flagSendTrim|flagSendWriteZeros|flagHasFlags) != flagSendFlush|flagSendFUA|flagSendTrim|flagSendWriteZeros|flagHasFlags {
		t.Errorf("read-write flags %#x", rw)
	}
	if ro&flagReadOnly == 0 || ro&(flagSendTrim|flagSendWriteZeros|flagSendFUA) != 0 {
		t.Errorf("read-only flags %#x", ro)
	}
}

func TestCloseEndsConnections(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "s")
	s, err := Listen(sock, blockdevtest.NewMem(1<<20), Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, sock, "")
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return with a client connected")
	}
	if _, err := c.conn.Read(make([]byte, 1)); err == nil {
		t.Error("connection still open after Close")
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

// TestMaxConns: past Options.MaxConns a connection is closed before negotiation; one that
// ends makes room for the next.
func TestMaxConns(t *testing.T) {
	sock, _, _ := newExport(t, Options{MaxConns: 1})
	first := dial(t, sock, "")
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(time.Minute))
	if n, err := conn.Read(make([]byte, 18)); err != io.EOF {
		t.Fatalf("a second connection read %d bytes, err %v; want EOF", n, err)
	}
	conn.Close()
	first.conn.Close()
	for {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(time.Minute))
		n, _ := io.ReadFull(c, make([]byte, 18))
		c.Close()
		if n == 18 {
			return // served once the first connection was gone
		}
	}
}
