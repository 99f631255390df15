package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/obdproject/obd/lsmt"
)

// runObd runs the command tree in process and returns what it wrote to stdout.
func runObd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runObd(t, args...)
	if err != nil {
		t.Fatalf("obd %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

const refDir = "../../testdata/reference"

// TestCatReferenceLayers reads upstream's scenario A through `obd layer cat`, as a plain
// commit, a ZFile commit and the writable layer itself, and checks the whole-disk digest.
func TestCatReferenceLayers(t *testing.T) {
	f, err := os.Open(filepath.Join(refDir, "lsmt/A.expected.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	first, _ := bufio.NewReader(f).ReadString('\n')
	want := strings.Fields(first)[2]

	rw := t.TempDir()
	copyFile(t, filepath.Join(refDir, "lsmt/A.rw.data"), filepath.Join(rw, lsmt.DataFileName))
	copyFile(t, filepath.Join(refDir, "lsmt/A.rw.index"), filepath.Join(rw, lsmt.IndexFileName))

	for _, layer := range []string{
		filepath.Join(refDir, "lsmt/A.commit.plain.lsmt"),
		filepath.Join(refDir, "lsmt/A.commit.lz4-bs4k.zfile"),
		rw,
	} {
		out := mustRun(t, "layer", "cat", layer)
		if got := sha([]byte(out)); got != want {
			t.Errorf("cat %s: sha256 %s, want %s", layer, got, want)
		}
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// rawImage returns n bytes of which every third 4 KiB block is zero, and the number of
// bytes in non-zero blocks.
func rawImage(seed int64, n int) ([]byte, int) {
	rng := rand.New(rand.NewSource(seed))
	b := make([]byte, n)
	nonZero := 0
	const block = lsmt.ImportZeroBlock
	for off := 0; off < n; off += block {
		end := min(off+block, n)
		if (off/block)%3 == 0 {
			continue
		}
		// Text-like, compressible bytes.
		for i := off; i < end; i++ {
			b[i] = "abcdefgh    \n"[rng.Intn(13)]
		}
		nonZero += end - off
	}
	return b, nonZero
}

func TestLayerLifecycle(t *testing.T) {
	dir := t.TempDir()
	raw, nonZero := rawImage(1, 3<<20+1024) // not a multiple of 4 KiB: exercises tail padding
	rawPath := filepath.Join(dir, "raw.img")
	if err := os.WriteFile(rawPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	upper := filepath.Join(dir, "upper")
	mustRun(t, "layer", "create", "--size", "16M", upper)

	cmd := newRootCmd()
	var stderr bytes.Buffer
	cmd.SetErr(&stderr)
	cmd.SetArgs([]string{"layer", "import", "--offset", "1M", upper, rawPath})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if want := "imported " + strconv.Itoa(nonZero) + " non-zero bytes"; !strings.Contains(stderr.String(), want) {
		t.Fatalf("import said %q, want %q: all-zero 4 KiB blocks must not be stored", stderr.String(), want)
	}

	disk := make([]byte, 16<<20)
	copy(disk[1<<20:], raw)

	out := filepath.Join(dir, "layer.tar")
	mustRun(t, "layer", "commit", "--zfile", "zstd", "--block-size", "64K", "--tar", "--uuid",
		"12345678-1234-1234-1234-123456789ABC", "--message", "base", upper, out)
	info := mustRun(t, "layer", "info", out)
	for _, want := range []string{"tar+zfile+lsmt", "12345678-1234-1234-1234-123456789ABC", "zstd", "65536", "virtual size: 16777216", "message:      base"} {
		if !strings.Contains(info, want) {
			t.Errorf("layer info lacks %q:\n%s", want, info)
		}
	}
	if got := mustRun(t, "layer", "cat", out); got != string(disk) {
		t.Fatalf("cat of the committed layer differs from the imported image")
	}
	if got := mustRun(t, "layer", "cat", "--offset", "1M", "--length", "4K", out); got != string(raw[:4096]) {
		t.Fatalf("cat --offset 1M --length 4K gives the wrong bytes")
	}
	mustRun(t, "layer", "fsck", out)

	// A second layer on top overrides part of the first; merge flattens both.
	upper2 := filepath.Join(dir, "upper2")
	mustRun(t, "layer", "create", "--size", "16M", "--parent", "12345678-1234-1234-1234-123456789ABC", upper2)
	patch, _ := rawImage(2, 64<<10)
	patchPath := filepath.Join(dir, "patch.img")
	if err := os.WriteFile(patchPath, patch, 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "layer", "import", "--offset", "1028K", upper2, patchPath)
	const block = lsmt.ImportZeroBlock
	for i := 0; i < len(patch); i += block {
		if !bytes.Equal(patch[i:i+block], make([]byte, block)) { // zero blocks were skipped: the lower shows through
			copy(disk[1028<<10+i:], patch[i:i+block])
		}
	}
	if got := mustRun(t, "layer", "cat", out, upper2); got != string(disk) {
		t.Fatalf("cat of base + writable upper is wrong")
	}
	top := filepath.Join(dir, "top.lsmt")
	mustRun(t, "layer", "commit", upper2, top)
	merged := filepath.Join(dir, "merged.zfile")
	mustRun(t, "layer", "merge", "--zfile", "lz4", out, top, merged)
	if got := mustRun(t, "layer", "cat", merged); got != string(disk) {
		t.Fatalf("merged layer differs from the stack")
	}
	mustRun(t, "layer", "fsck", out, top, merged)

	// Sealing in place needs no compaction and gives the same disk.
	sealed := filepath.Join(dir, "sealed.lsmt")
	mustRun(t, "layer", "commit", "--seal", upper2, sealed)
	if got := mustRun(t, "layer", "cat", out, sealed); got != string(disk) {
		t.Fatalf("stack with the sealed layer differs")
	}
}

func TestFsckNamesCorruptBlock(t *testing.T) {
	dir := t.TempDir()
	raw, _ := rawImage(3, 1<<20)
	rawPath := filepath.Join(dir, "raw.img")
	if err := os.WriteFile(rawPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	upper := filepath.Join(dir, "upper")
	mustRun(t, "layer", "create", "--size", "4M", upper)
	mustRun(t, "layer", "import", upper, rawPath)
	out := filepath.Join(dir, "layer.zfile")
	mustRun(t, "layer", "commit", "--zfile", "lz4", upper, out)

	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff // inside the compressed blocks, far from header, table and trailer
	if err := os.WriteFile(out, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = runObd(t, "layer", "fsck", out)
	if err == nil || !strings.Contains(err.Error(), "block") {
		t.Fatalf("fsck of a corrupt layer: err = %v, want an error naming the block", err)
	}
}

func TestZFileCommands(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(refDir, "zfile/input-300007.bin")
	want, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range [][]string{
		{"--algorithm", "lz4"},
		{"--algorithm", "zstd", "--level", "9", "--block-size", "16K"},
		{"--algorithm", "zstd", "--block-size", "64K", "--tar"},
	} {
		z := filepath.Join(dir, "out.z")
		mustRun(t, append(append([]string{"zfile", "compress"}, tc...), in, z)...)
		info := mustRun(t, "zfile", "info", z)
		if !strings.Contains(info, "original size: 300007") || !strings.Contains(info, tc[1]) {
			t.Errorf("%v: zfile info:\n%s", tc, info)
		}
		back := filepath.Join(dir, "back.bin")
		mustRun(t, "zfile", "decompress", z, back)
		got, err := os.ReadFile(back)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%v: round trip differs", tc)
		}
	}
	// Upstream's files decompress too, tar-wrapped or not.
	for _, name := range []string{"input-300007.lz4.bs4k.tar.zfile", "input-300007.zstd.bs64k.zfile"} {
		back := filepath.Join(dir, "ref.bin")
		mustRun(t, "zfile", "decompress", filepath.Join(refDir, "zfile", name), back)
		got, _ := os.ReadFile(back)
		if !bytes.Equal(got, want) {
			t.Errorf("%s: decompressed bytes differ from the input", name)
		}
	}
	// A corrupt block fails the decompression and leaves no output behind.
	out := filepath.Join(dir, "bad.bin")
	if _, err := runObd(t, "zfile", "decompress", filepath.Join(refDir, "zfile/BAD-crc-block5.zfile"), out); err == nil || !strings.Contains(err.Error(), "block 5") {
		t.Errorf("decompress of a corrupt file: err = %v, want one naming block 5", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a failed decompress left %s behind", out)
	}
}

func TestCommandErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"layer", "create", "--size", "12Q", dir}, "invalid size"},
		{[]string{"layer", "create", "--size", "1000", dir}, "multiple of 512"},
		{[]string{"layer", "commit", "--tar", dir, filepath.Join(dir, "x")}, "--tar needs --zfile"},
		{[]string{"zfile", "compress", "--algorithm", "gzip", "a", "b"}, "gzip"},
		{[]string{"zfile", "compress", "--block-size", "3000", filepath.Join(refDir, "zfile/input-300007.bin"), filepath.Join(dir, "x")}, "3000"},
		{[]string{"layer", "cat", filepath.Join(refDir, "zfile/input-300007.bin")}, "lsmt"},
	} {
		_, err := runObd(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("obd %v: err = %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}
