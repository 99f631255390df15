// Package zfile is the "zfile.Reader" box of obd's read path (docs/DESIGN.md): it reads and
// writes overlaybd's ZFile format (docs/FORMAT.md, "ZFile"), a file cut into fixed-size blocks
// that are compressed one by one (LZ4 or zstd), each followed by a CRC32C, with a jump table
// of stored block lengths and a trailer describing it all.
//
// A Reader wraps an io.ReaderAt holding the ZFile (a local file, or the tar member of a
// registry blob from tarblob) and is itself an io.ReaderAt of the original bytes, which
// lsmt.Layer wraps in turn. Reads go through the jump table to the compressed blocks; every
// block's checksum is verified before its bytes are returned. A Writer produces the format
// from a stream, compressing blocks in parallel with deterministic output.
package zfile
