package tarapply_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

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
