package tarapply

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// sparseChunk is the granularity at which runs of zeros become holes; it
// matches the ext4 block size the converter formats with.
const sparseChunk = 4096

var zeroChunk [sparseChunk]byte

// writeSparse copies exactly size bytes from r to fd, seeking over all-zero
// chunks so they stay holes. It returns the bytes consumed.
func writeSparse(fd int, r io.Reader, size int64) (int64, error) {
	buf := make([]byte, 256<<10)
	var off int64
	for off < size {
		want := min(int64(len(buf)), size-off)
		n, err := io.ReadFull(r, buf[:want])
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return off, fmt.Errorf("read body at %d of %d: %w", off, size, err)
		}
		for p := 0; p < n; p += sparseChunk {
			c := buf[p:min(p+sparseChunk, n)]
			if bytes.Equal(c, zeroChunk[:len(c)]) {
				continue
			}
			if _, err := unix.Pwrite(fd, c, off+int64(p)); err != nil {
				return off, fmt.Errorf("write at %d: %w", off+int64(p), err)
			}
		}
		off += int64(n)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		return off, fmt.Errorf("truncate to %d: %w", size, err)
	}
	return off, nil
}

const paxXattrPrefix = "SCHILY.xattr."

// setXattrs sets the entry's PAX xattrs on parent/base without following it,
// in sorted order so the result is reproducible.
func setXattrs(parent int, base string, hdr *tar.Header) error {
	var keys []string
	for k := range hdr.PAXRecords {
		// An empty PAX value deletes the keyword (POSIX pax), so it sets nothing.
		if strings.HasPrefix(k, paxXattrPrefix) && hdr.PAXRecords[k] != "" {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	sort.Strings(keys)
	// The parent's /proc link is followed, base is not: lsetxattr acts on the
	// entry itself even when it is a symlink.
	p := fmt.Sprintf("/proc/self/fd/%d/%s", parent, base)
	for _, k := range keys {
		attr := k[len(paxXattrPrefix):]
		if err := unix.Lsetxattr(p, attr, []byte(hdr.PAXRecords[k]), 0); err != nil {
			return fmt.Errorf("set xattr %s: %w", attr, err)
		}
	}
	return nil
}
