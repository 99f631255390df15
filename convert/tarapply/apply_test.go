package tarapply_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/convert/internal/fixture"
	"github.com/obdproject/obd/convert/internal/fstree"
	"github.com/obdproject/obd/convert/tarapply"
	"github.com/obdproject/obd/internal/facility"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		facility.Missing(t, "needs root: device nodes, ownership and security.capability")
	}
}

// TestApplyMatchesUmoci applies the fixture image's layers onto a plain
// directory and compares the tree with `umoci unpack` of the same image.
func TestApplyMatchesUmoci(t *testing.T) {
	requireRoot(t)
	umoci := fixture.Umoci(t)
	tmp := t.TempDir()
	layers, err := fixture.Layers(tmp)
	if err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(tmp, "layout")
	if err := fixture.WriteLayout(layout, "v1", layers); err != nil {
		t.Fatal(err)
	}
	want := fixture.UmociTree(t, umoci, layout, "v1")
	for _, deferRemoval := range []bool{false, true} {
		root := filepath.Join(tmp, fmt.Sprintf("root-%v", deferRemoval))
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, l := range layers {
			if _, err := tarapply.Apply(context.Background(), root, bytes.NewReader(l), tarapply.Options{DeferRemoval: deferRemoval}); err != nil {
				t.Fatalf("layer %d: %v", i+1, err)
			}
		}
		got, err := fstree.Snapshot(root, fstree.Options{})
		if err != nil {
			t.Fatal(err)
		}
		delete(got, ".")
		for _, d := range fstree.Diff(want, got) {
			t.Errorf("DeferRemoval %v: %s", deferRemoval, d)
		}
	}
	root := filepath.Join(tmp, "root-true")
	// Sparse input stays sparse: 8 MiB with three short runs of data.
	var st = mustStat(t, filepath.Join(root, "data/sparse"))
	if st.Size() != 8<<20 {
		t.Errorf("data/sparse size %d", st.Size())
	}
	if blocks := blocksOf(st); blocks*512 > 64<<10 {
		t.Errorf("data/sparse uses %d bytes on disk, want holes", blocks*512)
	}
}

// TestApplyDirectoryTimes: no access or modification time Apply leaves comes
// from the clock. Entries get their tar's times (far future ones too), a
// directory the layer changes without listing it (the root, a directory
// losing entries to whiteouts or an opaque marker, one written through a
// symlink) keeps its times, and missing parents get ImplicitTime.
func TestApplyDirectoryTimes(t *testing.T) {
	requireRoot(t)
	past := time.Date(2001, 2, 3, 4, 5, 6, 700, time.UTC)
	future := time.Date(2100, 1, 2, 3, 4, 5, 123456789, time.UTC)
	implicit := time.Unix(946684800, 0)
	rootTime := time.Date(2010, 1, 1, 0, 0, 0, 5, time.UTC)
	at := func(e fixture.Entry, mtime, atime time.Time) fixture.Entry {
		e.ModTime, e.AccessTime = mtime, atime
		return e
	}
	l1 := mustTar(t,
		at(fixture.Dir("d", 0o755, 0), past, past.Add(time.Hour)),
		fixture.File("d/x", 0o644, 0, "x"),
		at(fixture.Dir("o", 0o755, 0), future, future.Add(time.Hour)),
		fixture.File("o/hidden", 0o644, 0, "hidden"),
		at(fixture.Symlink("l", "d", 0), past.Add(time.Minute), past.Add(2*time.Minute)),
	)
	l2 := mustTar(t,
		fixture.File("d/.wh.x", 0o644, 0, ""),
		at(fixture.File("l/y", 0o644, 0, "through the symlink"), future, future),
		fixture.File("o/.wh..wh..opq", 0o644, 0, ""),
		at(fixture.File("imp/a/f", 0o644, 0, "f"), past, past),
		at(fixture.Dir("listed", 0o755, 0), future.Add(time.Minute), future.Add(time.Minute)),
		at(fixture.File("listed/f", 0o644, 0, "f"), past, past),
	)
	for _, deferRemoval := range []bool{false, true} {
		t.Run(fmt.Sprintf("DeferRemoval=%v", deferRemoval), func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "root")
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(root, rootTime, rootTime); err != nil {
				t.Fatal(err)
			}
			opts := tarapply.Options{DeferRemoval: deferRemoval, ImplicitTime: implicit}
			for i, l := range [][]byte{l1, l2} {
				if _, err := tarapply.Apply(context.Background(), root, bytes.NewReader(l), opts); err != nil {
					t.Fatalf("layer %d: %v", i+1, err)
				}
			}
			for _, c := range []struct {
				name         string
				mtime, atime time.Time
			}{
				{".", rootTime, rootTime},
				{"d", past, past.Add(time.Hour)},
				{"d/y", future, future},
				{"o", future, future.Add(time.Hour)},
				// Resolving l/y read the symlink, so its atime is the clock's
				// unless mounted noatime, as the converter mounts.
				{"l", past.Add(time.Minute), time.Time{}},
				{"imp", implicit, implicit},
				{"imp/a", implicit, implicit},
				{"imp/a/f", past, past},
				{"listed", future.Add(time.Minute), future.Add(time.Minute)},
			} {
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(root, c.name), &st); err != nil {
					t.Error(err)
					continue
				}
				if got := time.Unix(st.Mtim.Unix()); !got.Equal(c.mtime) {
					t.Errorf("%s: mtime %v, want %v", c.name, got.UTC(), c.mtime)
				}
				if got := time.Unix(st.Atim.Unix()); !c.atime.IsZero() && !got.Equal(c.atime) {
					t.Errorf("%s: atime %v, want %v", c.name, got.UTC(), c.atime)
				}
			}
			for _, gone := range []string{"d/x", "o/hidden", tarapply.TrashName} {
				if _, err := os.Lstat(filepath.Join(root, gone)); !os.IsNotExist(err) {
					t.Errorf("%s: %v, want it gone", gone, err)
				}
			}
		})
	}
}
