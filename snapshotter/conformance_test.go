package snapshotter

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
)

// TestConformance runs containerd's own snapshotter suite against the Snapshotter.
//
// Under any name but "overlayfs" the suite expects renaming a directory of a lower layer to
// work, which overlayfs does only with redirect_dir=on, so the suite's snapshotter sets it.
// TestMountsMatchContainerdOverlay covers the default options.
func TestConformance(t *testing.T) {
	requireOverlay(t)
	testsuite.SnapshotterSuite(t, "overlaybd", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := NewSnapshotter(root, WithMountOptions("redirect_dir=on"))
		if err != nil {
			return nil, nil, err
		}
		return sn, sn.Close, nil
	})
}

// TestMountsMatchContainerdOverlay drives containerd's overlayfs snapshotter and this one
// through the same operations and requires the same mounts, paths aside: the drop-in property
// for images without overlaybd layers.
func TestMountsMatchContainerdOverlay(t *testing.T) {
	requireOverlay(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	ourRoot, theirRoot := t.TempDir(), t.TempDir()
	ours, err := NewSnapshotter(ourRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	theirs, err := overlay.NewSnapshotter(theirRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close()

	type step struct {
		op, key, parent string
	}
	steps := []step{
		{"prepare", "l1-active", ""},
		{"commit", "l1", "l1-active"},
		{"view", "v1", "l1"},
		{"prepare", "l2-active", "l1"},
		{"commit", "l2", "l2-active"},
		{"prepare", "l3-active", "l2"},
		{"commit", "l3", "l3-active"},
		{"prepare", "container", "l3"},
		{"view", "v3", "l3"},
		{"mounts", "container", ""},
	}
	for _, s := range steps {
		var results [2]string
		for i, sn := range []snapshots.Snapshotter{ours, theirs} {
			root := []string{ourRoot, theirRoot}[i]
			var (
				mounts []mount.Mount
				err    error
			)
			switch s.op {
			case "prepare":
				mounts, err = sn.Prepare(ctx, s.key, s.parent)
			case "view":
				mounts, err = sn.View(ctx, s.key, s.parent)
			case "commit":
				err = sn.Commit(ctx, s.key, s.parent)
			case "mounts":
				mounts, err = sn.Mounts(ctx, s.key)
			}
			if err != nil {
				t.Fatalf("%s %s: %v", s.op, s.key, err)
			}
			results[i] = strings.ReplaceAll(fmt.Sprintf("%+v", mounts), root, "ROOT")
		}
		if results[0] != results[1] {
			t.Errorf("%s %s:\n ours   %s\n theirs %s", s.op, s.key, results[0], results[1])
		}
	}
	for _, key := range []string{"container", "v3", "v1"} {
		for _, sn := range []snapshots.Snapshotter{ours, theirs} {
			if err := sn.Remove(ctx, key); err != nil {
				t.Fatal(err)
			}
		}
	}
}
