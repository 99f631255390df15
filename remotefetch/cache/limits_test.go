package cache

import (
	"math"
	"os"
	"strings"
	"testing"

	"github.com/obdproject/obd/internal/facility"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// TestAcquireRefusesHugeSizes: a blob size is a claim from outside and sizes the entry's
// bitmaps, so one past MaxUnits fill units (or one that overflows the unit count) is an
// error naming the size, not an allocation.
func TestAcquireRefusesHugeSizes(t *testing.T) {
	c := openCache(t, t.TempDir(), 0)
	d := digest.FromString("huge")
	for _, size := range []int64{math.MaxInt64, math.MaxInt64 - testUnit + 2, MaxUnits*testUnit + 1} {
		if e, err := c.Acquire(d, size); err == nil || !strings.Contains(err.Error(), "size") {
			t.Errorf("Acquire of %d bytes: %v, want an error about the size", size, err)
			if e != nil {
				e.Release()
			}
		}
	}
	e, err := c.Acquire(d, MaxUnits*testUnit)
	if err != nil {
		t.Fatalf("Acquire of the largest size: %v", err)
	}
	e.Release()
}

// TestRecreatedDataFileIsNewEntry: a blob whose data file vanished (or was cut) while its
// bitmap stayed, as a crash or a careless cleanup can leave it, is a new, empty entry: its
// bitmap must not claim units that now read as zeros.
func TestRecreatedDataFileIsNewEntry(t *testing.T) {
	for name, damage := range map[string]func(path string) error{
		"removed":   os.Remove,
		"truncated": func(path string) error { return os.Truncate(path, testUnit) },
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			data := blobData(3, 4*testUnit)
			d := filledAndClosed(t, dir, data, 0, 1, 2)
			_, dataPath := (&Cache{opts: Options{Dir: dir}}).paths(Key{Digest: d})
			if err := damage(dataPath); err != nil {
				t.Fatal(err)
			}
			c2 := openCache(t, dir, 0)
			e2, err := c2.Acquire(d, int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			defer e2.Release()
			if got := e2.Missing(0, e2.Layout().Units()-1); len(got) != 4 {
				t.Fatalf("units missing after the data file was %s: %v, want all 4", name, got)
			}
		})
	}
}

// TestDiscardSyncsBitmapFirst: a discarded entry's empty bitmap is made durable before its
// data is dropped; otherwise a power loss could leave the old bitmap claiming units whose
// bytes are gone.
func TestDiscardSyncsBitmapFirst(t *testing.T) {
	data := blobData(4, 2*testUnit)
	c := openCache(t, t.TempDir(), 0)
	e, err := c.Acquire(digest.FromBytes(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Release()
	fillUnits(t, e, data, 0)
	var synced bool
	beforeDataDropped = func(e *Entry) { synced = e.bitmapSyncs > 0 }
	defer func() { beforeDataDropped = func(*Entry) {} }()
	if err := e.discard(); err != nil {
		t.Fatal(err)
	}
	if !synced {
		t.Fatal("discard dropped the data before the empty bitmap was synced")
	}
}

// TestFullDiskEvictsIdleBlobs: a write that finds the cache's file system full (ENOSPC)
// evicts the least recently used blob no one holds and is written, instead of failing for
// as long as the disk stays full.
func TestFullDiskEvictsIdleBlobs(t *testing.T) {
	if os.Geteuid() != 0 {
		facility.Missing(t, "needs root to mount a small tmpfs as the cache dir")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=384k"); err != nil {
		facility.Missing(t, "cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	old := blobData(5, 64*testUnit)
	filledAndClosed(t, dir, old, seq(64)...)
	c := openCache(t, dir, 0)
	data := blobData(6, 64*testUnit)
	e, err := c.Acquire(digest.FromBytes(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Release()
	for _, u := range seq(64) {
		off, n := e.Layout().UnitRange(u)
		if _, err := fillRange(e, data, off, off+n); err != nil {
			t.Fatalf("unit %d with the disk full: %v", u, err)
		}
	}
	if c.Holds(Key{Digest: digest.FromBytes(old)}) {
		t.Error("the idle blob is still cached: nothing made room")
	}
}

// seq is 0, 1, ..., n-1.
func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}
