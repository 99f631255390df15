package fuseloop

import (
	"encoding/binary"
	"log/slog"
	"os"
	"testing"

	"github.com/obdproject/obd/blockdev/blockdevtest"
)

func encodeRequest(opcode uint32, body []byte) []byte {
	b := make([]byte, inHeaderLen, inHeaderLen+len(body))
	binary.LittleEndian.PutUint32(b[0:], uint32(inHeaderLen+len(body)))
	binary.LittleEndian.PutUint32(b[4:], opcode)
	binary.LittleEndian.PutUint64(b[8:], 7)
	binary.LittleEndian.PutUint64(b[16:], 1)
	return append(b, body...)
}

// FuzzRequest feeds arbitrary FUSE requests to the server: whatever a (future or
// buggy) kernel sends, it answers without panicking. Replies go to /dev/null.
func FuzzRequest(f *testing.F) {
	read := make([]byte, 40)
	binary.LittleEndian.PutUint64(read[8:], 4096)
	binary.LittleEndian.PutUint32(read[16:], 8192)
	f.Add(encodeRequest(opRead, read))
	write := make([]byte, 40+5)
	binary.LittleEndian.PutUint64(write[8:], 100)
	binary.LittleEndian.PutUint32(write[16:], 5)
	f.Add(encodeRequest(opWrite, write))
	falloc := make([]byte, 32)
	binary.LittleEndian.PutUint64(falloc[16:], 4096)
	binary.LittleEndian.PutUint32(falloc[24:], fallocPunchHole|fallocKeepSize)
	f.Add(encodeRequest(opFallocate, falloc))
	f.Add(encodeRequest(opGetattr, make([]byte, 16)))
	f.Add(encodeRequest(opSetattr, make([]byte, 88)))
	initIn := make([]byte, 64)
	binary.LittleEndian.PutUint32(initIn[0:], 7)
	binary.LittleEndian.PutUint32(initIn[4:], 44)
	f.Add(encodeRequest(opInit, initIn))

	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		f.Fatal(err)
	}
	defer devnull.Close()
	logger := slog.New(slog.DiscardHandler)
	rw := &server{fuse: devnull, fd: int(devnull.Fd()), b: blockdevtest.NewMem(64 << 10), name: "rw", log: logger}
	ro := &server{fuse: devnull, fd: int(devnull.Fd()), b: blockdevtest.NewMem(64 << 10), readOnly: true, name: "ro", log: logger}
	data, out := make([]byte, maxWrite), make([]byte, 128)
	f.Fuzz(func(t *testing.T, req []byte) {
		h, err := parseInHeader(req)
		if err != nil {
			return
		}
		if h.opcode == opInit {
			initReply(req[inHeaderLen:])
		}
		rw.handle(h, req[inHeaderLen:], data, out)
		ro.handle(h, req[inHeaderLen:], data, out)
	})
}
