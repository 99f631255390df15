package ext4fs_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/convert/ext4fs"
	"github.com/obdproject/obd/ext4meta"
	"github.com/obdproject/obd/internal/facility"
)

const testUUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"

func requireMkfs(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		facility.Missing(t, "mkfs.ext4 not installed (apt-get install e2fsprogs)")
	}
}

func formatted(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(256 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := ext4fs.Format(context.Background(), p, testUUID); err != nil {
		t.Fatal(err)
	}
	return p
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func TestFormatIsDeterministic(t *testing.T) {
	requireMkfs(t)
	a, b := formatted(t), formatted(t)
	if fileSum(t, a) != fileSum(t, b) {
		t.Fatal("two formats with the same UUID differ")
	}
}

func TestNotExt4(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "zeros")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	if err := ext4fs.Normalize(f); !errors.Is(err, ext4fs.ErrNotExt4) {
		t.Errorf("Normalize of zeros: %v, want ErrNotExt4", err)
	}
	if _, err := ext4fs.FreeBlocks(f); !errors.Is(err, ext4fs.ErrNotExt4) {
		t.Errorf("FreeBlocks of zeros: %v, want ErrNotExt4", err)
	}
}

// TestNormalize mounts a fresh filesystem, creates files (the kernel stamps
// ctime, crtime and generation), gives them times in the past and far in the
// future, frees an inode with data, unmounts, normalizes, and checks the
// clock-dependent fields became fixed while the times userspace set stayed,
// to the nanosecond, whatever their value.
func TestNormalize(t *testing.T) {
	requireMkfs(t)
	if os.Geteuid() != 0 {
		facility.Missing(t, "needs root to loop-mount ext4")
	}
	disk := formatted(t)
	mnt := t.TempDir()
	mount := func() {
		if out, err := exec.Command("mount", "-o", "loop,noatime", disk, mnt).CombinedOutput(); err != nil {
			facility.Missing(t, "cannot loop-mount ext4 here: %v %s", err, out)
		}
	}
	mount()
	times := map[string]time.Time{
		"a": time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC),
		"b": time.Date(2100, 1, 2, 3, 4, 5, 123456789, time.UTC),
		"c": time.Now(), // while the filesystem is mounted: kept too
	}
	for name, mtime := range times {
		p := filepath.Join(mnt, name)
		if err := os.WriteFile(p, []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime.Add(time.Second), mtime); err != nil {
			t.Fatal(err)
		}
	}
	gone := filepath.Join(mnt, "gone")
	if err := os.WriteFile(gone, bytes.Repeat([]byte("x"), 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(gone, times["a"], times["a"]); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(gone)
	if err != nil {
		t.Fatal(err)
	}
	goneIno := fi.Sys().(*syscall.Stat_t).Ino
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ext4fs.Normalize(f); err != nil {
		t.Fatal(err)
	}
	free, err := ext4fs.FreeBlocks(f)
	if err != nil {
		t.Fatal(err)
	}
	checkFreedInode(t, f, goneIno)
	f.Close()
	if free(0) {
		t.Error("block 0 (superblock) reported free")
	}
	if !free(200 << 20) {
		t.Error("a block at 200 MiB of a nearly empty filesystem reported in use")
	}

	before := fileSum(t, disk)
	f, _ = os.OpenFile(disk, os.O_RDWR, 0)
	if err := ext4fs.Normalize(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if fileSum(t, disk) != before {
		t.Error("a second Normalize changed the filesystem")
	}

	mount()
	defer unix.Unmount(mnt, 0)
	ts := func(s unix.StatxTimestamp) time.Time { return time.Unix(s.Sec, int64(s.Nsec)) }
	for name, mtime := range times {
		var st unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, filepath.Join(mnt, name), 0, unix.STATX_ALL, &st); err != nil {
			t.Fatal(err)
		}
		if st.Ctime.Sec != ext4fs.FixedTime || st.Ctime.Nsec != 0 || st.Btime.Sec != ext4fs.FixedTime || st.Btime.Nsec != 0 {
			t.Errorf("%s: ctime %v, btime %v, want %d", name, ts(st.Ctime), ts(st.Btime), ext4fs.FixedTime)
		}
		if got := ts(st.Mtime); !got.Equal(mtime) {
			t.Errorf("%s: mtime %v, want the file's own %v", name, got, mtime)
		}
		if got := ts(st.Atime); !got.Equal(mtime.Add(time.Second)) {
			t.Errorf("%s: atime %v, want the file's own %v", name, got, mtime.Add(time.Second))
		}
		b, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil || !bytes.Equal(b, []byte(name)) {
			t.Errorf("%s content %q, %v", name, b, err)
		}
	}
}

// checkFreedInode reads inode ino of the filesystem on dev and checks that,
// freed, it holds FixedTime in every time field (the kernel stamped its
// deletion, change and, truncating it, modification times).
func checkFreedInode(t *testing.T, dev io.ReaderAt, ino uint64) {
	t.Helper()
	g, err := ext4meta.ReadGeometry(dev)
	if err != nil {
		t.Fatal(err)
	}
	idx := int64(ino - 1)
	off := g.Group(idx/g.InodesPerGroup).InodeTable*g.BlockSize + idx%g.InodesPerGroup*g.InodeSize
	b := make([]byte, g.InodeSize)
	if _, err := dev.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if le.Uint16(b[0x1A:]) != 0 {
		t.Fatalf("inode %d still has links", ino)
	}
	for name, at := range map[string]int{"atime": 0x08, "ctime": 0x0C, "mtime": 0x10, "dtime": 0x14, "crtime": 0x90} {
		if got := le.Uint32(b[at:]); got != ext4fs.FixedTime {
			t.Errorf("freed inode %d: %s %d, want %d", ino, name, got, ext4fs.FixedTime)
		}
	}
	for name, at := range map[string]int{"ctime": 0x84, "mtime": 0x88, "atime": 0x8C, "crtime": 0x94} {
		if got := le.Uint32(b[at:]); got != 0 {
			t.Errorf("freed inode %d: %s extra %#x, want 0", ino, name, got)
		}
	}
}
