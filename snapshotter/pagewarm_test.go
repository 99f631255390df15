package snapshotter

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

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
	paths := func(tr pagetrace.Trace) []string {
		var ps []string
		for _, r := range tr {
			ps = append(ps, r.Path)
		}
		return ps
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
