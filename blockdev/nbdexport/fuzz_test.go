package nbdexport

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/obdproject/obd/blockdev/blockdevtest"
)

// clientStream builds a well-formed client conversation: GO on the default export,
// then the given requests (write payloads included), then disconnect.
func clientStream(reqs ...[]byte) []byte {
	s := binary.BigEndian.AppendUint32(nil, handshakeFixedNewstyle|handshakeNoZeroes)
	info := binary.BigEndian.AppendUint32(nil, 0)
	info = binary.BigEndian.AppendUint16(info, 1)
	info = binary.BigEndian.AppendUint16(info, infoBlockSize)
	s = binary.BigEndian.AppendUint64(s, magicOption)
	s = binary.BigEndian.AppendUint32(s, optGo)
	s = binary.BigEndian.AppendUint32(s, uint32(len(info)))
	s = append(s, info...)
	for _, r := range reqs {
		s = append(s, r...)
	}
	return append(s, encodeRequest(cmdDisconnect, 0, 0, 0, 0)...)
}

func encodeRequest(typ, flags uint16, handle, off uint64, n uint32) []byte {
	r := binary.BigEndian.AppendUint32(nil, magicRequest)
	r = binary.BigEndian.AppendUint16(r, flags)
	r = binary.BigEndian.AppendUint16(r, typ)
	r = binary.BigEndian.AppendUint64(r, handle)
	r = binary.BigEndian.AppendUint64(r, off)
	return binary.BigEndian.AppendUint32(r, n)
}

// FuzzServeConn feeds arbitrary client bytes to the server: it must neither panic nor
// hang, whatever the negotiation or request stream holds.
func FuzzServeConn(f *testing.F) {
	f.Add(clientStream(encodeRequest(cmdRead, 0, 1, 0, 512)))
	f.Add(clientStream(append(encodeRequest(cmdWrite, cmdFlagFUA, 2, 4096, 4), 1, 2, 3, 4),
		encodeRequest(cmdTrim, 0, 3, 0, 4096), encodeRequest(cmdWriteZeroes, cmdFlagNoHole, 4, 0, 512),
		encodeRequest(cmdFlush, 0, 5, 0, 0)))
	f.Add([]byte{0, 0, 0, 3, 0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0, 0, 0, 3, 0, 0, 0, 0})
	logger := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, stream []byte) {
		server, client := net.Pipe()
		go io.Copy(io.Discard, client)
		go func() {
			client.Write(stream)
			client.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done := make(chan struct{})
		go func() {
			defer close(done)
			ServeConn(ctx, server, blockdevtest.NewMem(64<<10), Options{Logger: logger})
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("ServeConn did not return")
		}
	})
}
