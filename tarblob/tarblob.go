// Package tarblob is the "tar member" box of obd's read path (docs/DESIGN.md): an overlaybd layer
// blob in a registry is an uncompressed tar holding exactly one regular file,
// overlaybd.commit, whose payload is the (usually ZFile-wrapped) committed LSMT layer.
//
// Open locates that payload inside a blob with a few targeted ReadAt calls on the header
// blocks, never reading the payload itself, and returns it as an io.SectionReader for
// zfile.Open (or lsmt) to wrap. Write produces such a tar the way upstream overlaybd does.
package tarblob

import (
	"errors"
	"io"
)

// MemberName is the name of the one regular file in an overlaybd layer tar.
const MemberName = "overlaybd.commit"

// ErrNotLayerTar is returned (wrapped) by Open for any blob that is not a valid tar holding
// exactly one regular member named MemberName.
var ErrNotLayerTar = errors.New("not an overlaybd layer tar")

// HasMagic reports whether r looks like a tar: "ustar" at offset 257 (POSIX and GNU).
func HasMagic(r io.ReaderAt) bool {
	var b [5]byte
	n, _ := r.ReadAt(b[:], magicOff)
	return n == len(b) && string(b[:]) == "ustar"
}
