package fuseloop

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/lsmt"
)

// TestLSMTStack runs the real read path: ext4 written through a device on a stack
// with a writable upper, the upper committed to a layer, and that layer mounted
// read-only through a second device.
func TestLSMTStack(t *testing.T) {
	requireFacilities(t, "mkfs.ext4")
	dir := t.TempDir()
	upper, err := lsmt.Create(filepath.Join(dir, "upper"), lsmt.CreateOptions{VirtualSize: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { upper.Close() })
	rw, err := lsmt.NewStack(nil, upper)
	if err != nil {
		t.Fatal(err)
	}
	d := attach(t, rw, Options{Name: "rw"})
	run(t, "mkfs.ext4", "-q", "-F", d.Path())
	mnt := mountExt4(t, d.Path(), false)
	sums := writeTree(t, mnt, 20)
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	committed, err := os.Create(filepath.Join(dir, "layer.lsmt"))
	if err != nil {
		t.Fatal(err)
	}
	defer committed.Close()
	if _, err := upper.Commit(committed, lsmt.CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	st, err := committed.Stat()
	if err != nil {
		t.Fatal(err)
	}
	layer, err := lsmt.Open(committed, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	ro, err := lsmt.NewStack([]lsmt.Layer{layer}, nil)
	if err != nil {
		t.Fatal(err)
	}
	d2 := attach(t, ro, Options{Name: "ro", ReadOnly: true})
	mnt2 := mountExt4(t, d2.Path(), true)
	moved := map[string][32]byte{}
	for name, sum := range sums {
		moved[filepath.Join(mnt2, filepath.Base(name))] = sum
	}
	dropCaches(t)
	checkTree(t, moved)
}
