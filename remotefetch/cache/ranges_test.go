package cache

import (
	"bytes"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
	"pgregory.net/rapid"
)

// TestRangeSetMatchesModel: after any sequence of adds, covers answers as a per-byte model does.
func TestRangeSetMatchesModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		const domain = 200
		var s rangeSet
		var model [domain]bool
		for range rapid.IntRange(0, 20).Draw(t, "adds") {
			lo := rapid.Int64Range(0, domain-1).Draw(t, "lo")
			hi := rapid.Int64Range(lo, domain).Draw(t, "hi")
			s.add(lo, hi)
			for i := lo; i < hi; i++ {
				model[i] = true
			}
		}
		for i := 1; i < len(s.ranges); i++ {
			if s.ranges[i-1].hi >= s.ranges[i].lo {
				t.Fatalf("ranges not sorted and merged: %v", s.ranges)
			}
		}
		for range 20 {
			lo := rapid.Int64Range(0, domain-1).Draw(t, "qlo")
			hi := rapid.Int64Range(lo+1, domain).Draw(t, "qhi")
			want := true
			for i := lo; i < hi; i++ {
				want = want && model[i]
			}
			if got := s.covers(lo, hi); got != want {
				t.Fatalf("covers(%d, %d) = %v, want %v; ranges %v", lo, hi, got, want, s.ranges)
			}
		}
	})
}

func TestCommitRanges(t *testing.T) {
	dir := t.TempDir()
	data := blobData(3, 4*testUnit+100)
	d := digest.FromBytes(data)
	c := openCache(t, dir, 0)
	e, err := c.Acquire(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	write := func(off, end int64) {
		t.Helper()
		if _, err := fillRange(e, data, off, end); err != nil {
			t.Fatal(err)
		}
	}
	write(100, 300)
	write(testUnit-50, testUnit+10) // across units 0 and 1
	for _, q := range []struct {
		off, end int64
		want     bool
	}{{100, 300, true}, {150, 160, true}, {99, 300, false}, {100, 301, false},
		{testUnit - 50, testUnit + 10, true}, {200, testUnit, false}} {
		if got := e.HasRange(q.off, q.end); got != q.want {
			t.Errorf("HasRange(%d, %d) = %v, want %v", q.off, q.end, got, q.want)
		}
	}
	if has(e, 0) || c.Usage() != 0 {
		t.Fatalf("a partly written unit counts as filled (usage %d)", c.Usage())
	}
	write(0, 100)
	write(300, testUnit-50) // unit 0 is now whole
	if !has(e, 0) || has(e, 1) || c.Usage() != testUnit {
		t.Fatalf("after unit 0 was written in ranges: has 0 %v, has 1 %v, usage %d", has(e, 0), has(e, 1), c.Usage())
	}
	buf := make([]byte, 60)
	if _, err := e.ReadAt(buf, testUnit-50); err != nil || !bytes.Equal(buf, data[testUnit-50:testUnit+10]) {
		t.Fatalf("range read back differs (err %v)", err)
	}

	// Released and held again in the same process: the ranges are still there.
	if err := e.Release(); err != nil {
		t.Fatal(err)
	}
	if e, err = c.Acquire(d, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if !e.HasRange(testUnit, testUnit+10) {
		t.Fatal("range forgotten across a release")
	}
	// A fill begun before a discard is refused; a discard forgets the ranges.
	w, err := e.NewWriter(2*testUnit, 2*testUnit+5)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Verify(); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("verify of an incomplete blob: %v", err)
	}
	if _, err := w.WriteAt(data[2*testUnit:2*testUnit+5], 2*testUnit); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); !errors.Is(err, ErrDiscarded) {
		t.Fatalf("commit across a discard: %v", err)
	}
	if e.HasRange(testUnit, testUnit+10) || has(e, 0) {
		t.Fatal("ranges or units survived a discard")
	}
	write(testUnit, testUnit+10)
	if err := e.Release(); err != nil {
		t.Fatal(err)
	}
	c.Close()

	// A new process knows only whole units: the ranges are fetched again.
	c2 := openCache(t, dir, 0)
	e2, err := c2.Acquire(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Release()
	if e2.HasRange(testUnit, testUnit+10) {
		t.Fatal("an in-memory range survived a restart")
	}
}

// TestRangesCompleteBlob: ranges that cover every byte make the blob complete.
func TestRangesCompleteBlob(t *testing.T) {
	data := blobData(4, 2*testUnit+7)
	c := openCache(t, t.TempDir(), 0)
	e, err := c.Acquire(digest.FromBytes(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Release()
	if complete, err := fillRange(e, data, 0, 5000); err != nil || complete {
		t.Fatalf("first range: complete %v, err %v", complete, err)
	}
	complete, err := fillRange(e, data, 5000, int64(len(data)))
	if err != nil || !complete || !e.NeedsVerify() {
		t.Fatalf("last range: complete %v, err %v", complete, err)
	}
	if err := e.Verify(); err != nil {
		t.Fatal(err)
	}
}
