package tarblob

import (
	"fmt"
	"io"
	"strconv"
)

// paxHeaderName is the name upstream overlaybd gives the PAX extended header.
const paxHeaderName = "overlaybd.pax"

// Write writes a layer tar holding payload (exactly size bytes) as the member MemberName:
// a PAX header carrying the size record, a ustar header (mode 0100644, uid/gid 0,
// uname/gname root, mtime 0), the payload, zero padding to 512 bytes and two zero blocks.
// The payload starts at byte 1536 of the output, as upstream's does.
func Write(w io.Writer, payload io.Reader, size int64) error {
	if size < 0 {
		return fmt.Errorf("tarblob: negative payload size %d", size)
	}
	rec := paxRecord("size", strconv.FormatInt(size, 10))
	ustarSize := size
	if !fitsOctal(size, sizeLen) {
		ustarSize = 0 // the PAX record carries it
	}
	head := make([]byte, 0, 3*blockSize)
	head = append(head, newHeader(paxHeaderName, typePAX, 0o644, int64(len(rec)))...)
	head = append(head, pad(rec)...)
	head = append(head, newHeader(MemberName, typeRegular, 0o100644, ustarSize)...)
	if _, err := w.Write(head); err != nil {
		return fmt.Errorf("tarblob: write headers: %w", err)
	}
	n, err := io.CopyN(w, payload, size)
	if err != nil {
		return fmt.Errorf("tarblob: copy payload (%d of %d bytes): %w", n, size, err)
	}
	tail := make([]byte, (blockSize-size%blockSize)%blockSize+2*blockSize)
	if _, err := w.Write(tail); err != nil {
		return fmt.Errorf("tarblob: write end of archive: %w", err)
	}
	return nil
}

// paxRecord formats one PAX record; its leading length counts the whole record, its own
// digits included.
func paxRecord(key, value string) []byte {
	body := " " + key + "=" + value + "\n"
	n := len(body) + 1
	for len(strconv.Itoa(n))+len(body) != n {
		n = len(strconv.Itoa(n)) + len(body)
	}
	return []byte(strconv.Itoa(n) + body)
}

// pad extends b with zeros to a multiple of blockSize.
func pad(b []byte) []byte {
	return append(b, make([]byte, (blockSize-len(b)%blockSize)%blockSize)...)
}
