package sandbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// maxFrame bounds one message between the server and a sandbox (runner.py has the same).
const maxFrame = 16 << 20

// ErrFrame is returned for a malformed frame from a sandbox.
var ErrFrame = errors.New("sandbox: bad frame")

// writeFrame sends one message: a 4-byte big-endian length, then the payload.
func writeFrame(w io.Writer, payload []byte) error {
	if len(payload) > maxFrame {
		return fmt.Errorf("%w: %d bytes is over the %d byte limit", ErrFrame, len(payload), maxFrame)
	}
	buf := make([]byte, 4+len(payload))
	binary.BigEndian.PutUint32(buf, uint32(len(payload)))
	copy(buf[4:], payload)
	_, err := w.Write(buf)
	return err
}

// readFrame reads one message. The sandbox runs untrusted code, so the length is checked
// before anything is allocated.
func readFrame(r io.Reader) ([]byte, error) {
	var head [4]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(head[:])
	if n > maxFrame {
		return nil, fmt.Errorf("%w: length %d is over the %d byte limit", ErrFrame, n, maxFrame)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("%w: %d byte body: %w", ErrFrame, n, err)
	}
	return buf, nil
}
