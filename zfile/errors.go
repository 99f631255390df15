package zfile

import (
	"errors"
	"fmt"
)

// Sentinel errors; the errors this package returns wrap one of them where callers branch.
var (
	// ErrFormat means the bytes are not a valid ZFile: bad magic, flags, digest, jump table,
	// or a block that does not decompress to its expected length.
	ErrFormat = errors.New("invalid ZFile")
	// ErrChecksum means a block's stored CRC does not match its bytes.
	ErrChecksum = errors.New("block checksum mismatch")
)

// BlockError reports a failure to read one block of a ZFile.
type BlockError struct {
	Name   string // the ZFile's name from WithName (e.g. a blob digest or path); may be empty
	Block  int    // block index
	Offset int64  // file offset of the block's stored bytes inside the ZFile
	Err    error  // the cause; wraps ErrChecksum or ErrFormat for bad data
}

func (e *BlockError) Error() string {
	return fmt.Sprintf("%s: block %d at offset %d: %v", prefix(e.Name), e.Block, e.Offset, e.Err)
}

func (e *BlockError) Unwrap() error { return e.Err }

// prefix names the ZFile at the start of an error message.
func prefix(name string) string {
	if name == "" {
		return "zfile"
	}
	return "zfile " + name
}
