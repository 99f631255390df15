package ext4meta_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/obdproject/obd/ext4meta"
)

// FuzzWalk feeds Walk arbitrary device bytes, seeded with a small real filesystem: it must
// return (an error or stats) without panicking, and within its byte budget.
func FuzzWalk(f *testing.F) {
	if _, err := exec.LookPath("mkfs.ext4"); err == nil {
		dir := f.TempDir()
		src := filepath.Join(dir, "src")
		for _, d := range []string{"a/b/c", "d"} {
			if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
				f.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(src, "a/b/c/f"), []byte("data"), 0o644); err != nil {
			f.Fatal(err)
		}
		img := filepath.Join(dir, "img")
		if err := os.WriteFile(img, make([]byte, 256<<10), 0o644); err != nil {
			f.Fatal(err)
		}
		cmd := exec.Command("mkfs.ext4", "-q", "-F", "-b", "1024", "-N", "64", "-O", "extent,dir_index,filetype", "-d", src, img)
		cmd.Env = append(os.Environ(), "MKE2FS_CONFIG=/dev/null")
		if out, err := cmd.CombinedOutput(); err != nil {
			f.Fatalf("mkfs.ext4: %v: %s", err, out)
		}
		seed, err := os.ReadFile(img)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(seed)
	}
	f.Add(make([]byte, 4096))
	f.Fuzz(func(t *testing.T, dev []byte) {
		const budget = 1 << 20
		st, _, err := ext4meta.Walk(context.Background(), bytes.NewReader(dev), ext4meta.Options{MaxBytes: budget})
		if err == nil && st.Bytes > budget+ext4meta.SuperblockSize+16<<20 {
			t.Fatalf("walk read %d bytes with a budget of %d", st.Bytes, budget)
		}
	})
}
