package cache

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
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

func fillUnits(t testing.TB, e *Entry, data []byte, units ...int) {
	t.Helper()
	for _, i := range units {
		off, n := e.UnitRange(i)
		if _, err := e.WriteUnit(i, data[off:off+n]); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRestartReusesFilledUnits(t *testing.T) {
	dir := t.TempDir()
	data := blobData(1, 10*testUnit+100)
	d := digest.FromBytes(data)
	c := openCache(t, dir, 0)
	e, err := c.Acquire(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	fillUnits(t, e, data, 0, 3, 10)
	if err := e.Release(); err != nil {
		t.Fatal(err)
	}
	c.Close()

	c2 := openCache(t, dir, 0)
	if got, want := c2.Usage(), int64(2*testUnit+100); got != want {
		t.Fatalf("usage after restart %d, want %d", got, want)
	}
	e2, err := c2.Acquire(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Release()
	if got := e2.Missing(0, e2.Units()-1); fmt.Sprint(got) != "[1 2 4 5 6 7 8 9]" {
		t.Fatalf("missing after restart: %v", got)
	}
	for _, i := range []int{0, 3, 10} {
		off, n := e2.UnitRange(i)
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
		off, n := e.UnitRange(i)
		if complete, err = e.WriteUnit(i, bad[off:off+n]); err != nil {
			t.Fatal(err)
		}
	}
	if !complete {
		t.Fatal("last WriteUnit did not report completion")
	}
	if err := e.Verify(); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Verify of corrupt blob: %v", err)
	}
	if len(e.Missing(0, 2)) != 3 || c.Usage() != 0 {
		t.Fatalf("after mismatch: missing %v usage %d", e.Missing(0, 2), c.Usage())
	}
	fillUnits(t, e, data, 0, 1, 2)
	if err := e.Verify(); err != nil || !e.Verified() {
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
					fillUnits(t, e, data, r.IntN(e.Units()))
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
	for i := range e.Units() {
		if !e.Has(i) {
			continue
		}
		filled++
		off, n := e.UnitRange(i)
		if _, err := e.ReadAt(buf[:n], off); err != nil || !bytes.Equal(buf[:n], data[off:off+n]) {
			t.Fatalf("unit %d marked filled but holds wrong bytes after crash (err %v)", i, err)
		}
	}
	if filled < 200 || filled == e.Units() {
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
	for _, i := range r.Perm(e.Units()) {
		off, n := e.UnitRange(i)
		if _, err := e.WriteUnit(i, data[off:off+n]); err != nil {
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

// TestCommitAcrossDiscardRefused: a unit written in parts is not marked if the entry was
// discarded after its first part.
func TestCommitAcrossDiscardRefused(t *testing.T) {
	c := openCache(t, t.TempDir(), 0)
	data := blobData(3, 2*testUnit)
	e, err := c.Acquire(digest.FromBytes(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Release()
	gen := e.Generation()
	if err := e.WritePart(0, data[:100], 0); err != nil {
		t.Fatal(err)
	}
	if err := e.discard(); err != nil {
		t.Fatal(err)
	}
	if err := e.WritePart(0, data[100:testUnit], 100); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CommitUnit(0, gen); !errors.Is(err, ErrDiscarded) || e.Has(0) {
		t.Fatalf("commit across discard: %v, has %v", err, e.Has(0))
	}
	if err := e.WritePart(0, data[:testUnit+1], 0); err == nil {
		t.Fatal("a part longer than the unit: no error")
	}
}

// TestWriteUnitsSpansUnits: one write stores a run of units, the last one in part; only the
// committed units are filled, and a run past the end of the blob is refused.
func TestWriteUnitsSpansUnits(t *testing.T) {
	c := openCache(t, t.TempDir(), 0)
	data := blobData(4, 3*testUnit+100)
	e, err := c.Acquire(digest.FromBytes(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Release()
	gen := e.Generation()
	if err := e.WriteUnits(1, data[testUnit:2*testUnit+50]); err != nil {
		t.Fatal(err)
	}
	if e.Has(1) || e.Has(2) {
		t.Fatal("WriteUnits marked units filled")
	}
	if _, err := e.CommitUnit(1, gen); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, testUnit+50)
	if _, err := e.ReadAt(got, testUnit); err != nil || !bytes.Equal(got, data[testUnit:2*testUnit+50]) {
		t.Fatalf("read back after WriteUnits: %v", err)
	}
	if !e.Has(1) || e.Has(2) {
		t.Fatalf("filled: unit 1 %v, unit 2 %v; want only unit 1", e.Has(1), e.Has(2))
	}
	if err := e.WriteUnits(2, data[2*testUnit:]); err != nil {
		t.Fatalf("the run to the end of the blob: %v", err)
	}
	if err := e.WriteUnits(2, make([]byte, testUnit+101)); err == nil {
		t.Fatal("a run past the end of the blob: no error")
	}
	if err := e.WriteUnits(4, data[:1]); err == nil {
		t.Fatal("a unit past the last: no error")
	}
}
