package ext4meta_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/obdproject/obd/ext4meta"
	"github.com/obdproject/obd/internal/facility"
)

// recorder is a file that remembers which blocks were read.
type recorder struct {
	f         *os.File
	blockSize int64
	mu        sync.Mutex
	read      map[int64]bool
}

func (r *recorder) ReadAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	for b := off / r.blockSize; b*r.blockSize < off+int64(len(p)); b++ {
		r.read[b] = true
	}
	r.mu.Unlock()
	return r.f.ReadAt(p, off)
}

func requireTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			facility.Missing(t, "%s not installed (apt-get install e2fsprogs)", tool)
		}
	}
}

// tree fills dir with what a root filesystem has: nested directories, a directory big
// enough for several blocks and an htree, small files, fast and slow symlinks.
func tree(t *testing.T, dir string) (dirs, files []string) {
	t.Helper()
	mk := func(rel string) {
		if err := os.MkdirAll(filepath.Join(dir, rel), 0o755); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, "/"+rel)
	}
	put := func(rel string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, rel), data, 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, "/"+rel)
	}
	mk("usr/lib/python3/json")
	mk("usr/bin")
	mk("etc")
	for i := range 600 {
		put(fmt.Sprintf("usr/lib/python3/module_with_a_long_name_%04d.py", i), []byte(strings.Repeat("x", i%50)))
	}
	put("usr/lib/python3/json/__init__.py", []byte("import sys\n"))
	put("usr/bin/python3", bytes.Repeat([]byte("\x7fELF binary 0123"), 3<<20/16))
	for i := range 40 {
		mk(fmt.Sprintf("etc/d%02d/sub", i))
		put(fmt.Sprintf("etc/d%02d/sub/conf", i), []byte("k=v\n"))
	}
	if err := os.Symlink("python3", filepath.Join(dir, "usr/bin/py")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/"+strings.Repeat("long/", 30)+"target", filepath.Join(dir, "usr/bin/slowlink")); err != nil {
		t.Fatal(err)
	}
	files = append(files, "/usr/bin/py", "/usr/bin/slowlink")
	return dirs, files
}

func mkfs(t *testing.T, src string, size int64, args ...string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "fs.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cmd := exec.Command("mkfs.ext4", append(append([]string{"-q", "-F"}, args...), "-d", src, img)...)
	cmd.Env = append(os.Environ(), "MKE2FS_CONFIG=/dev/null")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	return img
}

func debugfs(t *testing.T, img, request string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", request, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs %s: %v: %s", request, err, out)
	}
	return string(out)
}

var imapBlock = regexp.MustCompile(`located at block (\d+)`)

// TestWalkReadsWhatLookupsNeed checks, against debugfs, that a walk reads the inode table
// block of every file and directory and every block of every directory and slow symlink:
// what path lookups and stat need.
func TestWalkReadsWhatLookupsNeed(t *testing.T) {
	requireTools(t)
	layouts := map[string][]string{
		// the converter's mkfs (docs/FORMAT.md, "The filesystem inside"): no checksums, so
		// unused-inode counts are not kept
		"converter": {"-b", "4096", "-I", "256", "-i", "16384", "-O", "64bit,flex_bg,extent,sparse_super2,resize_inode,dir_index,^has_journal,^metadata_csum"},
		"checksums": {"-b", "4096", "-I", "256", "-O", "extent,flex_bg,metadata_csum,64bit,dir_index,filetype,extra_isize"},
		"1k-blocks": {"-b", "1024", "-I", "128", "-O", "extent,dir_index,filetype"},
	}
	for name, args := range layouts {
		t.Run(name, func(t *testing.T) {
			src := t.TempDir()
			dirs, files := tree(t, src)
			img := mkfs(t, src, 512<<20, args...)
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			g, err := ext4meta.ReadGeometry(f)
			if err != nil {
				t.Fatal(err)
			}
			rec := &recorder{f: f, blockSize: g.BlockSize, read: map[int64]bool{}}
			st, known, err := ext4meta.Walk(context.Background(), rec, ext4meta.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if st.Truncated {
				t.Fatalf("walk truncated: %+v", st)
			}
			if want := len(dirs) + len(files); st.Inodes < want || st.Dirs < len(dirs) {
				t.Fatalf("walk found %d inodes, %d dirs; the tree has %d entries, %d dirs", st.Inodes, st.Dirs, want, len(dirs))
			}
			for _, p := range append(append([]string{"/"}, dirs...), files...) {
				m := imapBlock.FindStringSubmatch(debugfs(t, img, "imap "+p))
				if m == nil {
					t.Fatalf("debugfs imap %s: no block", p)
				}
				blk, _ := strconv.ParseInt(m[1], 10, 64)
				if !rec.read[blk] {
					t.Errorf("inode table block %d of %s not read", blk, p)
				}
			}
			for _, p := range append(append([]string{"/"}, dirs...), "/usr/bin/slowlink") {
				blocks := strings.Fields(debugfs(t, img, "blocks "+p))
				if len(blocks) == 0 || (p == "/usr/lib/python3" && len(blocks) < 2) {
					t.Fatalf("debugfs blocks %s: %q", p, blocks)
				}
				for _, b := range blocks[1:] { // the first field is debugfs's banner
					blk, err := strconv.ParseInt(b, 10, 64)
					if err != nil {
						continue
					}
					if !rec.read[blk] {
						t.Errorf("block %d of %s not read", blk, p)
					}
				}
			}
			// File data is not metadata: the 3 MiB binary must not have been read, but Files
			// knows where it lies.
			bin := -1
			var binBlocks int64
			for _, b := range strings.Fields(debugfs(t, img, "blocks /usr/bin/python3"))[1:] {
				blk, err := strconv.ParseInt(b, 10, 64)
				if err != nil {
					continue
				}
				if rec.read[blk] {
					t.Fatalf("data block %d of /usr/bin/python3 read", blk)
				}
				binBlocks++
				owners := 0
				known.Owners(blk*g.BlockSize, g.BlockSize, func(f int) { owners++; bin = f })
				if owners != 1 {
					t.Fatalf("block %d of /usr/bin/python3 has %d owners", blk, owners)
				}
			}
			if bin < 0 || known.Size(bin) != 3<<20 {
				t.Fatalf("Files: /usr/bin/python3 is file %d, want one of 3 MiB", bin)
			}
			var mapped int64
			for _, e := range known.Extents(bin) {
				mapped += e.Len
			}
			if mapped != binBlocks*g.BlockSize || mapped != 3<<20 {
				t.Fatalf("Files: /usr/bin/python3 maps %d bytes, debugfs lists %d blocks", mapped, binBlocks)
			}
			// every non-empty regular file of the tree is known
			want := 0
			for _, p := range files {
				if st, err := os.Lstat(filepath.Join(src, p)); err == nil && st.Mode().IsRegular() && st.Size() > 0 {
					want++
				}
			}
			if known.Len() != want {
				t.Fatalf("Files knows %d regular files, the tree has %d", known.Len(), want)
			}
			t.Logf("%s: %+v", name, st)
		})
	}
}

func TestWalkBudget(t *testing.T) {
	requireTools(t)
	src := t.TempDir()
	tree(t, src)
	img := mkfs(t, src, 256<<20, "-b", "4096", "-O", "extent")
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _, err := ext4meta.Walk(context.Background(), f, ext4meta.Options{MaxBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Truncated || st.Bytes > 64<<10+ext4meta.SuperblockSize+4096 {
		t.Fatalf("walk with a 64 KiB budget: %+v", st)
	}
}

func TestWalkNotExt4(t *testing.T) {
	p := filepath.Join(t.TempDir(), "zeros")
	if err := os.WriteFile(p, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, _, err := ext4meta.Walk(context.Background(), f, ext4meta.Options{}); !errors.Is(err, ext4meta.ErrNotExt4) {
		t.Fatalf("walk of zeros: %v, want ErrNotExt4", err)
	}
}

func TestWalkStopsWithContext(t *testing.T) {
	requireTools(t)
	src := t.TempDir()
	tree(t, src)
	f, err := os.Open(mkfs(t, src, 256<<20, "-b", "4096", "-O", "extent"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := ext4meta.Walk(ctx, f, ext4meta.Options{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("walk with a cancelled context: %v", err)
	}
}

// TestFilesClipsExtentsToSize: an inode that claims 100 bytes over 3 MiB of extents (as a
// hostile image's would) owns one block of the device, not 3 MiB: what Files reports is
// what a prefetch of the file reads.
func TestFilesClipsExtentsToSize(t *testing.T) {
	requireTools(t)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "big"), bytes.Repeat([]byte("data"), 3<<20/4), 0o644); err != nil {
		t.Fatal(err)
	}
	img := mkfs(t, src, 64<<20, "-b", "4096", "-O", "extent")
	if out, err := exec.Command("debugfs", "-w", "-R", "sif /big size 100", img).CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v: %s", err, out)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, files, err := ext4meta.Walk(context.Background(), f, ext4meta.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if files.Len() != 1 || files.Size(0) != 100 {
		t.Fatalf("want one file of 100 bytes, got %d files", files.Len())
	}
	var total int64
	for _, e := range files.Extents(0) {
		total += e.Len
	}
	if total != 4096 {
		t.Errorf("a file of 100 bytes owns %d device bytes, want one 4 KiB block", total)
	}
}
