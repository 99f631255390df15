package snapshotter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/pagetrace"
	"github.com/obdproject/obd/tracestore"
)

// TestPageTraceRecordedAndReadIn: the device of a chain without a page trace records one when
// it is released (the file its container read), and the next container's device reads that
// file in by itself, before anyone reads it.
func TestPageTraceRecordedAndReadIn(t *testing.T) {
	ctx := context.Background()
	traces := tracestore.Store{Dir: filepath.Join(t.TempDir(), "traces")}
	f := newLazyFixture(t, WithPageTraces(traces.Dir))
	layer := f.devices.addBlob(map[string]string{"bin/app": "the app's code", "etc/unread": "nobody reads this"})
	top := prepareLazyChain(t, f.sn, "paged", layer)
	chain, err := tracestore.ChainID([]digest.Digest{layer.Digest})
	if err != nil {
		t.Fatal(err)
	}
	rootfs := mountRootfs(t, f.prepare(t, "c1", top))
	assertFile(t, filepath.Join(rootfs, "bin/app"), "the app's code")
	unmountRootfs(t, rootfs)
	if _, err := traces.LoadPages(chain); !errors.Is(err, tracestore.ErrNoTrace) {
		t.Fatalf("page trace before the device went: %v", err)
	}
	f.remove(t, "c1") // no linger: the device goes now
	recorded, err := traces.LoadPages(chain)
	if err != nil {
		t.Fatal(err)
	}
	if got := paths(recorded); !slices.Equal(got, []string{"bin/app"}) {
		t.Fatalf("recorded page trace covers %v, want only bin/app", got)
	}

	f.prepare(t, "c2", top) // mounts the device again (an empty page cache), which reads bin/app in
	mnt := f.sn.deviceMountPath(f.sn.mustID(t, top))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		cached, err := pagetrace.Record(ctx, mnt)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Equal(paths(cached), []string{"bin/app"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after the mount, the page cache holds %v, want bin/app", paths(cached))
		}
	}
	f.remove(t, "c2") // stops nothing left running, records nothing: the chain has its trace
	again, err := traces.LoadPages(chain)
	if err != nil || !slices.Equal(paths(again), paths(recorded)) {
		t.Fatalf("page trace after the second device went: %v, %v", again, err)
	}
}

// TestOwnDeviceLabel: a container snapshot labelled imagelabels.OwnDevice gets a read-only
// device of its own under its overlay, with a page cache that holds none of what the shared
// device's containers read, and reads no page trace in; when it goes, what it read becomes
// the chain's page trace, which the shared device going later leaves alone.
func TestOwnDeviceLabel(t *testing.T) {
	ctx := context.Background()
	traces := tracestore.Store{Dir: filepath.Join(t.TempDir(), "traces")}
	f := newLazyFixture(t, WithPageTraces(traces.Dir))
	layer := f.devices.addBlob(map[string]string{"bin/app": "the app's code", "etc/conf": "config"})
	top := prepareLazyChain(t, f.sn, "own", layer)
	chain, err := tracestore.ChainID([]digest.Digest{layer.Digest})
	if err != nil {
		t.Fatal(err)
	}
	own := snapshots.WithLabels(map[string]string{imagelabels.OwnDevice: "true"})
	if _, err := f.sn.Prepare(ctx, "bad", top, snapshots.WithLabels(map[string]string{imagelabels.OwnDevice: "yes"})); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Prepare with %s=yes: err = %v, want InvalidArgument", imagelabels.OwnDevice, err)
	}

	shared := mountRootfs(t, f.prepare(t, "shared", top))
	assertFile(t, filepath.Join(shared, "bin/app"), "the app's code")
	sharedMnt := f.sn.deviceMountPath(f.sn.mustID(t, top))

	mounts, err := f.sn.Prepare(ctx, "recording", top, own)
	if err != nil {
		t.Fatal(err)
	}
	ownID := f.sn.mustID(t, "recording")
	ownMnt := f.sn.deviceMountPath(ownID)
	if len(mounts) != 1 || mounts[0].Type != "overlay" || !slices.Contains(mounts[0].Options, "lowerdir="+ownMnt) {
		t.Fatalf("mounts of the labelled snapshot = %+v, want an overlay on its own device at %s", mounts, ownMnt)
	}
	assertCounts(t, f.devices, 2, 2, 0)
	assertMounted(t, ownMnt, true)
	if cached, err := pagetrace.Record(ctx, ownMnt); err != nil || len(cached) != 0 {
		t.Fatalf("the own device's page cache holds %v (%v), want nothing: it is not the shared device's", cached, err)
	}
	rootfs := mountRootfs(t, mounts)
	assertFile(t, filepath.Join(rootfs, "etc/conf"), "config")
	if err := os.WriteFile(filepath.Join(rootfs, "written"), []byte("to the upper"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.sn.Commit(ctx, "committed", "recording"); !errdefs.IsNotImplemented(err) {
		t.Fatalf("Commit of a snapshot with its own device: err = %v, want NotImplemented", err)
	}
	unmountRootfs(t, rootfs)

	f.remove(t, "recording")
	assertCounts(t, f.devices, 1, 2, 1) // the own device went, the shared one serves "shared"
	assertMounted(t, sharedMnt, true)
	pages, err := traces.LoadPages(chain)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"etc/conf"}
	if got := paths(pages); !slices.Equal(got, want) {
		t.Fatalf("page trace after the own device went covers %v, want %v (its container's reads alone)", got, want)
	}

	// The shared device was mounted while the chain had no page trace; the own device's is
	// there now, and the shared device going records nothing over it.
	unmountRootfs(t, shared)
	f.remove(t, "shared")
	assertCounts(t, f.devices, 0, 2, 2)
	if pages, err := traces.LoadPages(chain); err != nil || !slices.Equal(paths(pages), want) {
		t.Fatalf("page trace after the shared device went: %v (%v), want the own device's %v", paths(pages), err, want)
	}

	// Alone on the chain, a labelled snapshot attaches only its own device, and reads the
	// chain's page trace in no more than the first did.
	f.prepare(t, "alone", top, own)
	assertCounts(t, f.devices, 1, 3, 2)
	f.sn.mountedMu.Lock()
	m := f.sn.mounted[f.sn.mustID(t, "alone")]
	f.sn.mountedMu.Unlock()
	if m == nil || !m.own || m.done != nil {
		t.Fatalf("the device of a labelled snapshot is tracked as %+v, want its own, with no warm-up", m)
	}
	f.remove(t, "alone")
	assertCounts(t, f.devices, 0, 3, 3)
}

// paths lists the paths of a page trace's ranges, in order.
func paths(tr pagetrace.Trace) []string {
	var ps []string
	for _, r := range tr {
		ps = append(ps, r.Path)
	}
	return ps
}
