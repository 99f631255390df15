package cache

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

const testUnit = 4096

// blobData is deterministic content for blob number seed.
func blobData(seed uint64, size int) []byte {
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, 7))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func openCache(t *testing.T, dir string, capacity int64) *Cache {
	t.Helper()
	c, err := Open(Options{Dir: dir, FillUnit: testUnit, Capacity: capacity, SyncDelay: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// fillRange stores data[off:end] through one Writer and commits it, reporting whether that
// completed the blob.
func fillRange(e *Entry, data []byte, off, end int64) (complete bool, err error) {
	w, err := e.NewWriter(off, end)
	if err != nil {
		return false, err
	}
	if _, err := w.WriteAt(data[off:end], off); err != nil {
		w.Abort()
		return false, err
	}
	return w.Commit()
}

// fillUnits fills the given units of e with their bytes of data, one Writer each.
func fillUnits(t testing.TB, e *Entry, data []byte, units ...int) {
	t.Helper()
	for _, i := range units {
		off, n := e.Layout().UnitRange(i)
		if _, err := fillRange(e, data, off, off+n); err != nil {
			t.Fatal(err)
		}
	}
}

// filledAndClosed fills the given units of blob data in a cache in dir, releases it and
// closes the cache, as a process that stops does; it returns the blob's digest.
func filledAndClosed(t *testing.T, dir string, data []byte, units ...int) digest.Digest {
	t.Helper()
	d := digest.FromBytes(data)
	c := openCache(t, dir, 0)
	e, err := c.Acquire(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	fillUnits(t, e, data, units...)
	if err := e.Release(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	return d
}

// has reports whether unit i of e is present as a whole.
func has(e *Entry, i int) bool { return len(e.Missing(i, i)) == 0 }

func TestRestartReusesFilledUnits(t *testing.T) {
	dir := t.TempDir()
	data := blobData(1, 10*testUnit+100)
	d := filledAndClosed(t, dir, data, 0, 3, 10)

	c2 := openCache(t, dir, 0)
	if got, want := c2.Usage(), int64(2*testUnit+100); got != want {
		t.Fatalf("usage after restart %d, want %d", got, want)
	}
	e2, err := c2.Acquire(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Release()
	if got := e2.Missing(0, e2.Layout().Units()-1); fmt.Sprint(got) != "[1 2 4 5 6 7 8 9]" {
		t.Fatalf("missing after restart: %v", got)
	}
	for _, i := range []int{0, 3, 10} {
		off, n := e2.Layout().UnitRange(i)
		buf := make([]byte, n)
		if _, err := e2.ReadAt(buf, off); err != nil || !bytes.Equal(buf, data[off:off+n]) {
			t.Fatalf("unit %d differs after restart (err %v)", i, err)
		}
	}
	// The same digest with another size is a different blob: refuse while held.
	if _, err := c2.Acquire(d, 5); err == nil {
		t.Fatal("acquire with a different size while held: no error")
	}
}

func TestDigestMismatchDiscards(t *testing.T) {
	c := openCache(t, t.TempDir(), 0)
	data := blobData(2, 3*testUnit)
	d := digest.FromBytes(data)
	e, err := c.Acquire(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Release()
	bad := bytes.Clone(data)
	bad[testUnit+5] ^= 1
	var complete bool
	for i := range 3 {
		off, n := e.Layout().UnitRange(i)
		if complete, err = fillRange(e, bad, off, off+n); err != nil {
			t.Fatal(err)
		}
	}
	if !complete || !e.NeedsVerify() {
		t.Fatal("the last fill did not report completion")
	}
	if err := e.Verify(); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Verify of corrupt blob: %v", err)
	}
	if len(e.Missing(0, 2)) != 3 || c.Usage() != 0 {
		t.Fatalf("after mismatch: missing %v usage %d", e.Missing(0, 2), c.Usage())
	}
	fillUnits(t, e, data, 0, 1, 2)
	if err := e.Verify(); err != nil || e.NeedsVerify() {
		t.Fatalf("Verify of good blob: %v", err)
	}
}

// TestCapacityUnderConcurrentReaders fills many blobs from many goroutines; usage never
// exceeds capacity plus the blobs held at that moment, and ends within capacity.
func TestCapacityUnderConcurrentReaders(t *testing.T) {
	const (
		blobs    = 24
		size     = 8 * testUnit
		capacity = 5 * size
	)
	c := openCache(t, t.TempDir(), capacity)
	var held sync.Map // goroutine -> bytes held
	var wg sync.WaitGroup
	var failed sync.Once
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 30 {
				n := r.IntN(blobs)
				data := blobData(uint64(100+n), size)
				e, err := c.Acquire(digest.FromBytes(data), size)
				if err != nil {
					failed.Do(func() { t.Error(err) })
					return
				}
				held.Store(g, int64(size))
				for range 4 {
					fillUnits(t, e, data, r.IntN(e.Layout().Units()))
				}
				var holding int64
				held.Range(func(_, v any) bool { holding += v.(int64); return true })
				if u := c.Usage(); u > capacity+holding {
					failed.Do(func() { t.Errorf("usage %d > capacity %d + held %d", u, capacity, holding) })
				}
				held.Store(g, int64(0))
				if err := e.Release(); err != nil {
					failed.Do(func() { t.Error(err) })
				}
			}
		})
	}
	wg.Wait()
	if u := c.Usage(); u > capacity {
		t.Fatalf("usage %d > capacity %d after all released", u, capacity)
	}
	var onDisk int64
	filepath.Walk(c.opts.Dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && filepath.Ext(p) == ".data" {
			onDisk += info.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	if onDisk > capacity+int64(blobs)*testUnit { // allow filesystem block rounding
		t.Fatalf("disk usage %d exceeds capacity %d", onDisk, capacity)
	}
}

func TestEvictsLeastRecentlyUsed(t *testing.T) {
	const size = 4 * testUnit
	c := openCache(t, t.TempDir(), 2*size)
	var ds []digest.Digest
	for i := range 3 {
		data := blobData(uint64(200+i), size)
		d := digest.FromBytes(data)
		ds = append(ds, d)
		e, err := c.Acquire(d, size)
		if err != nil {
			t.Fatal(err)
		}
		fillUnits(t, e, data, 0, 1, 2, 3)
		if err := e.Release(); err != nil {
			t.Fatal(err)
		}
		if i == 1 { // touch blob 0 so blob 1 is the least recently used
			e, _ := c.Acquire(ds[0], size)
			e.Release()
		}
	}
	for i, want := range []bool{true, false, true} {
		e, err := c.Acquire(ds[i], size)
		if err != nil {
			t.Fatal(err)
		}
		if got := len(e.Missing(0, 3)) == 0; got != want {
			t.Errorf("blob %d cached = %v, want %v", i, got, want)
		}
		e.Release()
	}
}

const crashEnv = "OBD_CACHE_CRASH_CHILD"

// TestCrashSafety kills a writer process with SIGKILL mid-fill, reopens its cache and checks
// that every unit the bitmap calls filled holds the right bytes.
func TestCrashSafety(t *testing.T) {
	if dir := os.Getenv(crashEnv); dir != "" {
		crashChild(dir)
		return
	}
	dir := t.TempDir()
	data := blobData(9, 4096*testUnit)
	d := digest.FromBytes(data)
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashSafety$")
	cmd.Env = append(os.Environ(), crashEnv+"="+dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	bmPath := filepath.Join(dir, "sha256", d.Encoded()+".bitmap")
	deadline := time.Now().Add(20 * time.Second)
	for {
		raw, _ := os.ReadFile(bmPath)
		if bm, _, err := decodeBitmap(raw, testUnit, int64(len(data))); err == nil && bm.count() >= 200 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("child made no progress")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()

	c := openCache(t, dir, 0)
	e, err := c.Acquire(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Release()
	filled := 0
	buf := make([]byte, testUnit)
	for i := range e.Layout().Units() {
		if !has(e, i) {
			continue
		}
		filled++
		off, n := e.Layout().UnitRange(i)
		if _, err := e.ReadAt(buf[:n], off); err != nil || !bytes.Equal(buf[:n], data[off:off+n]) {
			t.Fatalf("unit %d marked filled but holds wrong bytes after crash (err %v)", i, err)
		}
	}
	if filled < 200 || filled == e.Layout().Units() {
		t.Fatalf("%d units filled after crash: the child was not killed mid-fill", filled)
	}
}

// crashChild fills units in random order forever, until killed.
func crashChild(dir string) {
	data := blobData(9, 4096*testUnit)
	c, err := Open(Options{Dir: dir, FillUnit: testUnit, SyncDelay: time.Millisecond})
	if err != nil {
		panic(err)
	}
	e, err := c.Acquire(digest.FromBytes(data), int64(len(data)))
	if err != nil {
		panic(err)
	}
	seed, _ := strconv.Atoi(os.Getenv("SEED"))
	r := rand.New(rand.NewPCG(uint64(seed), 3))
	for _, i := range r.Perm(e.Layout().Units()) {
		off, n := e.Layout().UnitRange(i)
		if _, err := fillRange(e, data, off, off+n); err != nil {
			panic(err)
		}
		time.Sleep(200 * time.Microsecond)
	}
	time.Sleep(time.Hour)
}

func FuzzDecodeBitmap(f *testing.F) {
	f.Add(newBitmap(10).encode(4096, 40000, 1, 10), int64(4096), int64(40000))
	f.Add([]byte("OBDCBMP1"), int64(4096), int64(1))
	f.Fuzz(func(t *testing.T, raw []byte, unit, size int64) {
		if unit <= 0 || size < 0 || size/unit > 1<<20 {
			return
		}
		bm, flags, err := decodeBitmap(raw, unit, size)
		if err != nil {
			return
		}
		n := unitCount(size, unit)
		if !bytes.Equal(bm.encode(unit, size, flags, n), raw) {
			t.Fatal("decode/encode round trip differs")
		}
	})
}

// TestCommitAcrossDiscardRefused: a fill written in parts is not made present if the entry
// was discarded after its first part.
func TestCommitAcrossDiscardRefused(t *testing.T) {
	c := openCache(t, t.TempDir(), 0)
	data := blobData(3, 2*testUnit)
	e, err := c.Acquire(digest.FromBytes(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Release()
	w, err := e.NewWriter(0, testUnit)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(data[:100], 0); err != nil {
		t.Fatal(err)
	}
	if err := e.discard(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(data[100:testUnit], 100); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); !errors.Is(err, ErrDiscarded) || has(e, 0) {
		t.Fatalf("commit across discard: %v, has %v", err, has(e, 0))
	}
}

// TestWriterContract: a Writer's bytes are present only once it commits its whole range;
// writes outside the range, a commit of a range not fully written and any use after Commit or
// Abort are refused.
func TestWriterContract(t *testing.T) {
	c := openCache(t, t.TempDir(), 0)
	data := blobData(4, 3*testUnit+100)
	e, err := c.Acquire(digest.FromBytes(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Release()
	if _, err := e.NewWriter(0, int64(len(data))+1); err == nil {
		t.Fatal("a fill past the end of the blob: no error")
	}
	if _, err := e.NewWriter(5, 5); err == nil {
		t.Fatal("an empty fill: no error")
	}
	w, err := e.NewWriter(testUnit, 3*testUnit)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(data[testUnit:3*testUnit+1], testUnit); err == nil {
		t.Fatal("a write past the fill range: no error")
	}
	if _, err := w.WriteAt(data[testUnit:2*testUnit+50], testUnit); err != nil {
		t.Fatal(err)
	}
	if e.HasRange(testUnit, testUnit+1) {
		t.Fatal("written bytes are present before Commit")
	}
	got := make([]byte, testUnit+50)
	if _, err := e.ReadAt(got, testUnit); err != nil || !bytes.Equal(got, data[testUnit:2*testUnit+50]) {
		t.Fatalf("read back before Commit: %v", err)
	}
	if _, err := w.Commit(); err == nil || has(e, 1) {
		t.Fatalf("commit of a range written in part: %v, unit 1 present %v", err, has(e, 1))
	}
	if _, err := w.WriteAt(data[testUnit:testUnit+1], testUnit); err == nil {
		t.Fatal("a write after Commit: no error")
	}
	a, err := e.NewWriter(0, testUnit)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteAt(data[:testUnit], 0); err != nil {
		t.Fatal(err)
	}
	a.Abort()
	if _, err := a.Commit(); err == nil || has(e, 0) {
		t.Fatalf("commit after Abort: %v, unit 0 present %v", err, has(e, 0))
	}
	if complete, err := fillRange(e, data, testUnit, int64(len(data))); err != nil || complete {
		t.Fatalf("fill to the end: complete %v, %v; want not complete", complete, err)
	}
	if !has(e, 1) || !has(e, 3) || has(e, 0) {
		t.Fatalf("present: units 0 %v, 1 %v, 3 %v; want 1 and 3", has(e, 0), has(e, 1), has(e, 3))
	}
}

// Entries of one digest in different scopes keep their own bytes, also across a reopen: bytes
// fetched for one scope never serve another.
func TestScopesAreSeparate(t *testing.T) {
	dir := t.TempDir()
	data := blobData(41, 3*testUnit)
	d := digest.FromBytes(data)
	other := bytes.Repeat([]byte{0xee}, len(data))
	c := openCache(t, dir, 0)
	a, err := c.AcquireKey(Key{Digest: d, Scope: "aa"}, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	fillUnits(t, a, other, 0, 1, 2)
	if err := a.Release(); err != nil {
		t.Fatal(err)
	}
	c.Close()

	c = openCache(t, dir, 0)
	for _, k := range []Key{{Digest: d}, {Digest: d, Scope: "bb"}} {
		e, err := c.AcquireKey(k, int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		if e.HasRange(0, 1) {
			t.Fatalf("%s has the bytes of scope aa", k)
		}
		if err := e.Release(); err != nil {
			t.Fatal(err)
		}
	}
	e, err := c.AcquireKey(Key{Digest: d, Scope: "aa"}, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Release()
	got := make([]byte, len(data))
	if !e.HasRange(0, int64(len(data))) {
		t.Fatal("scope aa lost its bytes across a reopen")
	}
	if _, err := e.ReadAt(got, 0); err != nil || !bytes.Equal(got, other) {
		t.Fatalf("scope aa reads other bytes (%v)", err)
	}
	if _, err := c.AcquireKey(Key{Digest: d, Scope: "../x"}, 1); err == nil {
		t.Fatal("a scope that is not hex was accepted")
	}
}

// A verified entry moves to the shared scope, where Verified finds it, also after a reopen;
// an unverified one does not, nor does a second scope once the shared one is there.
func TestPromoteVerified(t *testing.T) {
	dir := t.TempDir()
	data := blobData(42, 3*testUnit)
	d := digest.FromBytes(data)
	c := openCache(t, dir, 0)
	a, err := c.AcquireKey(Key{Digest: d, Scope: "aa"}, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	fillUnits(t, a, data, 0, 1)
	if ok, err := a.Promote(); ok || err == nil {
		t.Fatalf("an incomplete entry was promoted (%v, %v)", ok, err)
	}
	fillUnits(t, a, data, 2)
	if err := a.Verify(); err != nil {
		t.Fatal(err)
	}
	if c.Verified(d) {
		t.Fatal("Verified before Promote")
	}
	if ok, err := a.Promote(); !ok || err != nil {
		t.Fatalf("Promote: %v, %v", ok, err)
	}
	if !c.Verified(d) {
		t.Fatal("not Verified after Promote")
	}
	b, err := c.AcquireKey(Key{Digest: d, Scope: "bb"}, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	fillUnits(t, b, data, 0, 1, 2)
	if err := b.Verify(); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Promote(); ok || err != nil {
		t.Fatalf("a second scope was promoted over the first: %v, %v", ok, err)
	}
	for _, e := range []*Entry{a, b} {
		if err := e.Release(); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	c = openCache(t, dir, 0)
	if !c.Verified(d) {
		t.Fatal("the promoted entry is not Verified after a reopen")
	}
	e, err := c.Acquire(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Release()
	got := make([]byte, len(data))
	if _, err := e.ReadAt(got, 0); err != nil || !e.HasRange(0, int64(len(data))) || !bytes.Equal(got, data) {
		t.Fatalf("the promoted entry lost its bytes (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "sha256", d.Encoded()+".aa.data")); !os.IsNotExist(err) {
		t.Fatalf("the scoped files are still there: %v", err)
	}
}

// An entry promoted while the Commit that completed it is still accounting its bytes keeps
// them in the cache's usage (run under -race: the entry's key is shared between the two).
func TestPromoteWhileCommitCompletes(t *testing.T) {
	c := openCache(t, t.TempDir(), 0)
	for i := range 50 {
		data := blobData(uint64(100+i), 3*testUnit)
		e, err := c.AcquireKey(Key{Digest: digest.FromBytes(data), Scope: "aa"}, int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		fillUnits(t, e, data, 0, 1)
		before := c.Usage()
		done := make(chan error, 1)
		go func() {
			_, err := fillRange(e, data, 2*testUnit, 3*testUnit)
			done <- err
		}()
		for !e.HasRange(0, int64(len(data))) {
			runtime.Gosched()
		}
		if err := e.Verify(); err != nil {
			t.Fatal(err)
		}
		if ok, err := e.Promote(); !ok || err != nil {
			t.Fatalf("Promote: %v, %v", ok, err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if got := c.Usage() - before; got != testUnit {
			t.Fatalf("blob %d: usage grew by %d, want %d", i, got, testUnit)
		}
		if err := e.Release(); err != nil {
			t.Fatal(err)
		}
	}
}
