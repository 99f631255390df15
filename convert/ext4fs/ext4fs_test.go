package ext4fs_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/convert/ext4fs"
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
	if err := ext4fs.Normalize(f, 0); !errors.Is(err, ext4fs.ErrNotExt4) {
		t.Errorf("Normalize of zeros: %v, want ErrNotExt4", err)
	}
	if _, err := ext4fs.FreeBlocks(f); !errors.Is(err, ext4fs.ErrNotExt4) {
		t.Errorf("FreeBlocks of zeros: %v, want ErrNotExt4", err)
	}
}

// TestNormalize mounts a fresh filesystem, creates files (the kernel stamps
// ctime, crtime and generation), unmounts, normalizes, and checks the
// clock-dependent fields became fixed while tar times stayed.
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
	since := time.Now().Unix() - 1
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	for _, name := range []string{"a", "b"} {
		p := filepath.Join(mnt, name)
		if err := os.WriteFile(p, []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ext4fs.Normalize(f, since); err != nil {
		t.Fatal(err)
	}
	free, err := ext4fs.FreeBlocks(f)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if free(0) {
		t.Error("block 0 (superblock) reported free")
	}
	if !free(200 << 20) {
		t.Error("a block at 200 MiB of a nearly empty filesystem reported in use")
	}

	before := fileSum(t, disk)
	f, _ = os.OpenFile(disk, os.O_RDWR, 0)
	if err := ext4fs.Normalize(f, since); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if fileSum(t, disk) != before {
		t.Error("a second Normalize changed the filesystem")
	}

	mount()
	defer unix.Unmount(mnt, 0)
	for _, name := range []string{"a", "b"} {
		var st unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, filepath.Join(mnt, name), 0, unix.STATX_ALL, &st); err != nil {
			t.Fatal(err)
		}
		if st.Ctime.Sec != ext4fs.FixedTime || st.Btime.Sec != ext4fs.FixedTime {
			t.Errorf("%s: ctime %d, btime %d, want %d", name, st.Ctime.Sec, st.Btime.Sec, ext4fs.FixedTime)
		}
		if st.Mtime.Sec != old.Unix() {
			t.Errorf("%s: mtime %d, want the file's own %d", name, st.Mtime.Sec, old.Unix())
		}
		b, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil || !bytes.Equal(b, []byte(name)) {
			t.Errorf("%s content %q, %v", name, b, err)
		}
	}
}
