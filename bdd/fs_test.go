package bdd_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// makeTree fills a temp dir with a deterministic mix of files: empty, small, block
// sized and a few MiB large, in nested directories, plus a symlink.
func makeTree(t testing.TB, seed uint64, files int) string {
	t.Helper()
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := range files {
		sub := filepath.Join(dir, fmt.Sprintf("d%d/e%d", i%7, i%3))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		var size int
		switch i % 5 {
		case 0:
			size = 0
		case 1:
			size = rng.IntN(4096)
		case 2:
			size = 4096 * (1 + rng.IntN(8))
		case 3:
			size = rng.IntN(256 << 10)
		case 4:
			size = rng.IntN(3 << 20)
		}
		data := make([]byte, size)
		// Half random (incompressible), half text-like, as real images are.
		if i%2 == 0 {
			for j := range data {
				data[j] = byte(rng.Uint32())
			}
		} else {
			line := fmt.Appendf(nil, "file %d line of text %x\n", i, rng.Uint64())
			for j := range data {
				data[j] = line[j%len(line)]
			}
		}
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%04d", i)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("d0/e0/f0000", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// treeSums maps each regular file's relative path to its SHA-256.
func treeSums(t testing.TB, root string) map[string]string {
	t.Helper()
	sums, err := sumTree(root)
	if err != nil {
		t.Fatal(err)
	}
	return sums
}

// sumTree is treeSums for goroutines, which must not stop the test themselves.
func sumTree(root string) (map[string]string, error) {
	sums := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() && rel == "lost+found" {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		sums[rel] = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("checksumming %s: %w", root, err)
	}
	return sums, nil
}

// compareSums fails the test for every file that is missing, extra or different.
func compareSums(t testing.TB, want, got map[string]string) {
	t.Helper()
	bad := 0
	for p, w := range want {
		if g, ok := got[p]; !ok {
			t.Errorf("file %s missing", p)
			bad++
		} else if g != w {
			t.Errorf("file %s: sha256 %s, want %s", p, g, w)
			bad++
		}
		if bad > 10 {
			t.Fatal("too many differences")
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("unexpected file %s", p)
		}
	}
}

// mkfsExt4 builds an ext4 image of size bytes holding the files of tree.
func mkfsExt4(t testing.TB, tree string, size int64) string {
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
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-d", tree, img)
	return img
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// mount mounts dev on a fresh dir and unmounts it when the test ends.
func mount(t testing.TB, dev string, readOnly bool) string {
	t.Helper()
	mnt := t.TempDir()
	opts := "rw"
	if readOnly {
		opts = "ro,noload"
	}
	run(t, "mount", "-t", "ext4", "-o", opts, dev, mnt)
	t.Cleanup(func() {
		// A test may have unmounted it already.
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil && !strings.Contains(string(out), "not mounted") {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}
