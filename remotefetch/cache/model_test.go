package cache

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"pgregory.net/rapid"
)

// entryModel is what an Entry must hold after a sequence of fills: a byte map from offset to
// the present byte (-1: not present), the bytes the data file holds (present or merely
// stored), whether the blob was verified, and the Writers begun.
type entryModel struct {
	lay      Layout
	present  []int
	file     []byte
	verified bool
	writers  []*modelWriter
}

// modelWriter is a Writer under test and what the model expects of it.
type modelWriter struct {
	w         *Writer
	off, end  int64
	written   []bool // per byte of the range
	discarded bool   // the blob was discarded after the Writer began
}

func newEntryModel(lay Layout) *entryModel {
	m := &entryModel{lay: lay, present: make([]int, lay.Size), file: make([]byte, lay.Size)}
	m.discard()
	return m
}

// discard forgets every byte, as a digest mismatch does.
func (m *entryModel) discard() {
	for i := range m.present {
		m.present[i] = -1
	}
	clear(m.file)
	m.verified = false
	for _, mw := range m.writers {
		mw.discarded = true
	}
}

func (m *entryModel) has(off, end int64) bool {
	for i := off; i < end; i++ {
		if m.present[i] < 0 {
			return false
		}
	}
	return true
}

// forgetPieces drops the present bytes outside whole present units, as a restart does.
func (m *entryModel) forgetPieces() {
	for i := range m.lay.Units() {
		if off, n := m.lay.UnitRange(i); !m.has(off, off+n) {
			for j := off; j < off+n; j++ {
				m.present[j] = -1
			}
		}
	}
}

// usage is the bytes of whole present units.
func (m *entryModel) usage() int64 {
	var n int64
	for i := range m.lay.Units() {
		if off, un := m.lay.UnitRange(i); m.has(off, off+un) {
			n += un
		}
	}
	return n
}

// source is where a model run draws its choices: a seeded *rand.Rand, or rapid (which
// shrinks a failing run to a short one).
type source interface {
	IntN(n int) int
	Int64N(n int64) int64
}

// rapidSource draws from a rapid test.
type rapidSource struct{ t *rapid.T }

func (s rapidSource) IntN(n int) int       { return rapid.IntRange(0, n-1).Draw(s.t, "choice") }
func (s rapidSource) Int64N(n int64) int64 { return rapid.Int64Range(0, n-1).Draw(s.t, "offset") }

// modelRun drives one Entry and its model with random operations.
type modelRun struct {
	r      source
	dir    string
	data   []byte
	c      *Cache
	e      *Entry
	m      *entryModel
	log    []string
	commit func(*Writer) (bool, error) // Writer.Commit, or a broken stand-in
}

// checkEntryModel runs steps random operations on a fresh Entry in dir, checking it against
// the model after each, and returns the first disagreement with the operations that led to
// it. commit stands for Writer.Commit.
func checkEntryModel(dir string, r source, steps int, commit func(*Writer) (bool, error)) error {
	data := blobData(1, 5*testUnit+123)
	run := &modelRun{r: r, dir: dir, data: data,
		m: newEntryModel(Layout{Size: int64(len(data)), Unit: testUnit}), commit: commit}
	if err := run.open(); err != nil {
		return err
	}
	defer func() { run.e.Release(); run.c.Close() }()
	for range steps {
		err := run.step()
		if err == nil {
			err = run.check()
		}
		if err != nil {
			return fmt.Errorf("%w\noperations:\n%s", err, strings.Join(run.log, "\n"))
		}
	}
	return nil
}

func (run *modelRun) open() error {
	c, err := Open(Options{Dir: run.dir, FillUnit: testUnit, SyncDelay: time.Millisecond})
	if err != nil {
		return err
	}
	e, err := c.Acquire(digest.FromBytes(run.data), int64(len(run.data)))
	if err != nil {
		c.Close()
		return err
	}
	run.c, run.e = c, e
	return nil
}

// randomRange picks a non-empty range: often whole units, else any bytes, up to three units.
func (run *modelRun) randomRange() (off, end int64) {
	size := run.m.lay.Size
	if run.r.IntN(3) == 0 {
		first := run.r.IntN(run.m.lay.Units())
		last := min(first+run.r.IntN(3), run.m.lay.Units()-1)
		off, _ = run.m.lay.UnitRange(first)
		lastOff, lastN := run.m.lay.UnitRange(last)
		return off, lastOff + lastN
	}
	off = run.r.Int64N(size)
	return off, min(size, off+1+run.r.Int64N(3*testUnit))
}

func (run *modelRun) step() error {
	m := run.m
	switch op := run.r.IntN(20); {
	case op < 4 || len(m.writers) == 0:
		off, end := run.randomRange()
		w, err := run.e.NewWriter(off, end)
		if err != nil {
			return fmt.Errorf("NewWriter(%d, %d): %w", off, end, err)
		}
		m.writers = append(m.writers, &modelWriter{w: w, off: off, end: end, written: make([]bool, end-off)})
		run.logf("writer %d: begin %d-%d", len(m.writers)-1, off, end)
	case op < 10:
		i := run.r.IntN(len(m.writers))
		mw := m.writers[i]
		lo := mw.off + run.r.Int64N(mw.end-mw.off)
		hi := lo + 1 + run.r.Int64N(mw.end-lo)
		if run.r.IntN(2) == 0 {
			lo, hi = mw.off, mw.end
		}
		run.logf("writer %d: write %d-%d", i, lo, hi)
		if _, err := mw.w.WriteAt(run.data[lo:hi], lo); err != nil {
			return fmt.Errorf("WriteAt: %w", err)
		}
		for j := lo; j < hi; j++ {
			mw.written[j-mw.off] = true
		}
		copy(m.file[lo:hi], run.data[lo:hi])
	case op < 14:
		return run.commitOne(run.r.IntN(len(m.writers)))
	case op < 16:
		i := run.r.IntN(len(m.writers))
		run.logf("writer %d: abort", i)
		m.writers[i].w.Abort()
		m.writers = append(m.writers[:i], m.writers[i+1:]...)
	case op < 17:
		return run.garbage()
	case op < 18:
		return run.verify()
	default:
		return run.restart()
	}
	return nil
}

// commitOne commits writer i: it succeeds exactly when the Writer stored its whole range and
// the blob was not discarded since it began.
func (run *modelRun) commitOne(i int) error {
	m := run.m
	mw := m.writers[i]
	m.writers = append(m.writers[:i], m.writers[i+1:]...)
	wasComplete := m.has(0, m.lay.Size)
	whole := !slices.Contains(mw.written, false)
	complete, err := run.commit(mw.w)
	run.logf("writer %d: commit %d-%d: complete %v, %v", i, mw.off, mw.end, complete, err)
	switch {
	case !whole:
		if err == nil {
			return errors.New("commit of a range not fully written: no error")
		}
		return nil
	case mw.discarded:
		if !errors.Is(err, ErrDiscarded) {
			return fmt.Errorf("commit across a discard: %v, want ErrDiscarded", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("commit: %w", err)
	}
	for j := mw.off; j < mw.end; j++ {
		m.present[j] = int(run.data[j])
	}
	if want := !wasComplete && m.has(0, m.lay.Size) && !m.verified; complete != want {
		return fmt.Errorf("commit reported complete %v, want %v", complete, want)
	}
	return nil
}

// garbage stores wrong bytes where nothing is present and no Writer fills, then aborts: they
// must never become present.
func (run *modelRun) garbage() error {
	off, end := run.randomRange()
	for j := off; j < end; j++ {
		if run.m.present[j] >= 0 {
			return nil
		}
	}
	for _, mw := range run.m.writers {
		if mw.off < end && off < mw.end {
			return nil
		}
	}
	run.logf("garbage %d-%d, abort", off, end)
	w, err := run.e.NewWriter(off, end)
	if err != nil {
		return err
	}
	junk := bytes.Repeat([]byte{0xA5}, int(end-off))
	if _, err := w.WriteAt(junk, off); err != nil {
		return err
	}
	copy(run.m.file[off:end], junk)
	w.Abort()
	return nil
}

// verify checks the data file against the digest: it matches when the file holds the blob
// (stored bytes count too), else the blob is discarded. A verified blob is not hashed again.
func (run *modelRun) verify() error {
	m := run.m
	match := m.verified || bytes.Equal(m.file, run.data)
	err := run.e.Verify()
	run.logf("verify (file holds the blob: %v): %v", match, err)
	if match {
		if err != nil {
			return fmt.Errorf("verify of the blob: %w", err)
		}
		m.verified = true
		return nil
	}
	if !errors.Is(err, ErrDigestMismatch) {
		return fmt.Errorf("verify of other bytes: %v, want ErrDigestMismatch", err)
	}
	m.discard()
	return nil
}

// restart aborts every Writer, as a filler does before release, then closes and reopens the
// cache: only whole units stay present.
func (run *modelRun) restart() error {
	run.logf("restart")
	for _, mw := range run.m.writers {
		mw.w.Abort()
	}
	run.m.writers = nil
	if err := run.e.Release(); err != nil {
		return err
	}
	if err := run.c.Close(); err != nil {
		return err
	}
	run.m.forgetPieces()
	return run.open()
}

// check compares the Entry with the model: presence of random ranges and of every unit,
// the bytes ReadAt returns (the blob's where present), completeness and usage.
func (run *modelRun) check() error {
	m, e := run.m, run.e
	for range 4 {
		off, end := run.randomRange()
		want := m.has(off, end)
		if got := e.HasRange(off, end); got != want {
			return fmt.Errorf("HasRange(%d, %d) = %v, want %v", off, end, got, want)
		}
		buf := make([]byte, end-off)
		if _, err := e.ReadAt(buf, off); err != nil || !bytes.Equal(buf, m.file[off:end]) {
			return fmt.Errorf("ReadAt(%d, %d): not the stored bytes (err %v)", off, end, err)
		}
		if want && !bytes.Equal(buf, run.data[off:end]) {
			return fmt.Errorf("ReadAt(%d, %d): present bytes are not the blob's", off, end)
		}
	}
	var missing []int
	for i := range m.lay.Units() {
		if off, n := m.lay.UnitRange(i); !m.has(off, off+n) {
			missing = append(missing, i)
		}
	}
	if got := e.Missing(0, m.lay.Units()-1); fmt.Sprint(got) != fmt.Sprint(missing) {
		return fmt.Errorf("Missing = %v, want %v", got, missing)
	}
	if got, want := e.NeedsVerify(), m.has(0, m.lay.Size) && !m.verified; got != want {
		return fmt.Errorf("NeedsVerify = %v, want %v", got, want)
	}
	if got, want := run.c.Usage(), m.usage(); got != want {
		return fmt.Errorf("Usage = %d, want %d", got, want)
	}
	return nil
}

func (run *modelRun) logf(format string, args ...any) {
	run.log = append(run.log, fmt.Sprintf(format, args...))
}

// TestEntryMatchesModel: random sequences of fills, commits, aborts, discards, restarts and
// reads leave an Entry holding exactly what the model says.
func TestEntryMatchesModel(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		steps := rapid.IntRange(1, 200).Draw(rt, "steps")
		if err := checkEntryModel(t.TempDir(), rapidSource{rt}, steps, (*Writer).Commit); err != nil {
			rt.Fatal(err)
		}
	})
}

// TestEntryModelCatchesSkippedCommit: the model test fails when a commit that would succeed
// is skipped (the Writer aborted, success reported), so it can fail at all.
func TestEntryModelCatchesSkippedCommit(t *testing.T) {
	skip := func(w *Writer) (bool, error) {
		if !w.written.covers(w.off, w.end) {
			return w.Commit() // fails as it should: only a commit that would succeed is skipped
		}
		w.Abort()
		return false, nil
	}
	for seed := range uint64(5) {
		err := checkEntryModel(t.TempDir(), rand.New(rand.NewPCG(seed, 11)), 300, skip)
		if err == nil {
			t.Fatalf("seed %d: commits skipped, yet the entry matched the model", seed)
		}
		first, _, _ := strings.Cut(err.Error(), "\n")
		t.Logf("caught: %s", first)
	}
}
