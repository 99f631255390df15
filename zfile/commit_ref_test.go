package zfile

import (
	"bytes"
	"os"
	"testing"
)

// TestReadUpstreamCommit reads the ZFile that overlaybd-commit -z wrote (final header, flags
// 0x1B) and writes it again: obd's WriterAt path must reproduce upstream's bytes exactly.
func TestReadUpstreamCommit(t *testing.T) {
	z, err := os.ReadFile("../testdata/reference/lsmt/A.commit.lz4-bs4k.zfile")
	if err != nil {
		t.Fatal(err)
	}
	plain, err := os.ReadFile("../testdata/reference/lsmt/A.commit.plain.lsmt")
	if err != nil {
		t.Fatal(err)
	}
	zr := open(t, z)
	if info := zr.Info(); info.HeaderFlags != 0x1B || !info.HeaderHasInfo || info.Algorithm != LZ4 || info.BlockSize != 4096 {
		t.Fatalf("Info %+v: want an LZ4 4 KiB file with a 0x1B header", info)
	}
	got := readAll(t, zr)
	if len(got) != len(plain) {
		t.Fatalf("original size %d, plain commit %d", len(got), len(plain))
	}
	// The two commits differ only in the UUID field (bytes 56-92) of the LSMT header and
	// trailer.
	const uuidOff, uuidEnd, lsmtStruct = 56, 93, 4096
	for _, base := range []int{0, len(plain) - lsmtStruct} {
		copy(plain[base+uuidOff:base+uuidEnd], got[base+uuidOff:base+uuidEnd])
	}
	if !bytes.Equal(got, plain) {
		t.Fatal("decompressed commit differs from the plain commit beyond the UUIDs")
	}
	if again := compressToFile(t, got, nil, Options{}); !bytes.Equal(again, z) {
		t.Fatalf("re-compressing through an os.File gives %d bytes that differ from overlaybd-commit -z's %d", len(again), len(z))
	}
}
