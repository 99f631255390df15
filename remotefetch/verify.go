package remotefetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/rangetable"
	"github.com/obdproject/obd/remotefetch/cache"
)

// Verified reads (docs/DESIGN.md, "Verified lazy reads"). A blob opened with its range table
// (WithRangeTable) checks every byte it fetches before a reader or the cache sees it: the
// filler widens each request to whole chunks of the table, and the response passes through a
// rangeVerifier that hands bytes on only chunk by chunk, each one checked against its SHA-256
// in the table (the table itself, the blob's last bytes, against the digest the manifest
// pins). A blob opened without a table is checked only as a whole, once complete; until then
// its bytes are trusted by no one but the repository they came from, so its cache entry and
// its sharing are scoped to (registry host, repository, digest). A blob with a table is
// scoped to (digest, table, table offset): bytes checked against one table never serve an
// image that pins another.

// OpenOption adds to what Open knows about a blob.
type OpenOption func(*openOptions)

type openOptions struct {
	table       digest.Digest
	tableOffset int64
	checked     bool   // the caller checks every range it reads
	replay      bool   // Prefetch: fills the cache, hands no bytes to a reader
	ipfs        string // the blob's IPFS CID (WithIPFS); "" = none
}

// WithCallerChecks says that the caller checks every range it reads against digests of its
// own (an indexed OCI layer's seek index holds a range table of the layer blob), so Options.RequireVerified lets
// the blob open without a range table. Its cache entry stays scoped to its repository, as
// for any blob without a table.
func WithCallerChecks() OpenOption {
	return func(o *openOptions) { o.checked = true }
}

// WithRangeTable says that the blob carries a range table (package rangetable) of the given
// digest in its bytes [offset, size): every fetched range is then checked against it.
func WithRangeTable(table digest.Digest, offset int64) OpenOption {
	return func(o *openOptions) { o.table, o.tableOffset = table, offset }
}

// maxMismatches is how many attempts in a row may bring bytes that fail their check before a
// fetch gives up: a mirror or connection can be wrong once, a registry that keeps serving
// other bytes is not retried for the whole read deadline.
const maxMismatches = 3

// DefaultMaxRangeTable is the default bound on a range table's size: with 16 KiB chunks it
// covers a 32 GiB blob.
const DefaultMaxRangeTable = 64 << 20

// DefaultRangeTableMemory is the default bound on the range tables held in memory at once,
// over all open blobs: a python image's three tables take 0.3 MiB, but an image can claim a
// table of MaxRangeTable for each of 255 layers.
const DefaultRangeTableMemory = 256 << 20

// tableBudget counts the bytes of range tables in memory against a bound.
type tableBudget struct {
	mu    sync.Mutex
	limit int64
	used  int64
}

// take reserves n bytes, or reports false if they would pass the bound.
func (b *tableBudget) take(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.limit {
		return false
	}
	b.used += n
	return true
}

func (b *tableBudget) give(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}

// scopeKey is the cache key of blob dgst opened with o from repository repo of registry host.
func scopeKey(dgst digest.Digest, o openOptions, host, repo string) cache.Key {
	var s string
	if o.table != "" {
		s = "table " + o.table.String() + " " + strconv.FormatInt(o.tableOffset, 10)
	} else {
		s = "repository " + host + "/" + repo
	}
	sum := sha256.Sum256([]byte(s))
	return cache.Key{Digest: dgst, Scope: hex.EncodeToString(sum[:16])}
}

// checkTablePin checks a range table's digest and offset against the blob's size and cap.
func checkTablePin(dgst digest.Digest, size int64, o openOptions, maxTable int64) error {
	if err := o.table.Validate(); err != nil {
		return fmt.Errorf("remotefetch: blob %s: range table digest %q: %w", dgst, o.table, err)
	}
	if o.tableOffset < 0 || o.tableOffset >= size {
		return fmt.Errorf("remotefetch: blob %s: range table offset %d outside the %d-byte blob", dgst, o.tableOffset, size)
	}
	if n := size - o.tableOffset; n > maxTable {
		return fmt.Errorf("remotefetch: blob %s: range table of %d bytes, more than the %d allowed", dgst, n, maxTable)
	}
	return nil
}

// rangeVerifier checks a blob's bytes chunk by chunk: those the table covers against their
// digests, the table's own bytes (the rest of the blob) against the table.
type rangeVerifier struct {
	tbl  *rangetable.Table
	raw  []byte // the table: the blob's bytes [tbl.Covered(), size)
	size int64
}

// chunkAt is the chunk [off, end) holding byte pos: a chunk of the table, or a piece of the
// table itself, in chunk-sized pieces from its start.
func (v *rangeVerifier) chunkAt(pos int64) (off, end int64) {
	return chunkOf(pos, v.tbl.Chunk(), v.tbl.Covered(), v.size)
}

// widen is the smallest run of whole chunks holding [off, end).
func (v *rangeVerifier) widen(off, end int64) (int64, int64) {
	return widenBy(off, end, v.tbl.Chunk(), v.tbl.Covered(), v.size)
}

// chunkOf is the chunk holding pos of a blob of size bytes whose table, of chunks of c bytes,
// covers [0, p) and takes up the rest.
func chunkOf(pos, c, p, size int64) (off, end int64) {
	if pos >= p {
		off = p + (pos-p)/c*c
		return off, min(off+c, size)
	}
	off = pos / c * c
	return off, min(off+c, p)
}

// widenBy is the smallest run of whole chunks holding [off, end), as chunkOf divides the blob.
func widenBy(off, end, c, p, size int64) (int64, int64) {
	a, _ := chunkOf(off, c, p, size)
	_, b := chunkOf(end-1, c, p, size)
	return a, b
}

// check checks p, the chunk at off.
func (v *rangeVerifier) check(off int64, p []byte) error {
	p0 := v.tbl.Covered()
	if off < p0 {
		return v.tbl.Check(off, p)
	}
	if !bytes.Equal(p, v.raw[off-p0:off-p0+int64(len(p))]) {
		return fmt.Errorf("%w: bytes %d-%d are not the range table", ErrRangeMismatch, off, off+int64(len(p)))
	}
	return nil
}

// verifyingReader hands on the bytes [want, end) of a response that holds whole chunks from
// pos on, one chunk at a time, each only once it has arrived whole and passed its check.
type verifyingReader struct {
	r    io.Reader
	v    *rangeVerifier
	dgst digest.Digest
	from string

	pos       int64 // blob offset of the next byte of r
	want, end int64 // what to hand on
	buf       []byte
	bufOff    int64 // blob offset of buf[0]; buf holds a checked chunk
}

func (vr *verifyingReader) Read(p []byte) (int, error) {
	for {
		if vr.want >= vr.end {
			return 0, io.EOF
		}
		if bufEnd := vr.bufOff + int64(len(vr.buf)); vr.want < bufEnd && vr.want >= vr.bufOff {
			n := copy(p, vr.buf[vr.want-vr.bufOff:min(bufEnd, vr.end)-vr.bufOff])
			vr.want += int64(n)
			return n, nil
		}
		off, end := vr.v.chunkAt(vr.pos)
		if int64(cap(vr.buf)) < end-off {
			vr.buf = make([]byte, end-off)
		}
		vr.buf = vr.buf[:end-off]
		vr.bufOff = -1 // nothing checked in buf while it fills
		if _, err := io.ReadFull(vr.r, vr.buf); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		if err := vr.v.check(off, vr.buf); err != nil {
			return 0, fmt.Errorf("remotefetch: blob %s bytes %d-%d from %s: %w", vr.dgst, off, end, vr.from, err)
		}
		vr.bufOff, vr.pos = off, end
	}
}

// tableLoader fetches, checks and parses a blob's range table once, for every fetch of the
// blob to wait on. A load that failed for a cause a retry may fix is tried again by the next
// fetch; one that found wrong bytes maxMismatches times stays failed.
type tableLoader struct {
	table  digest.Digest
	offset int64
	size   int64
	budget *tableBudget // the Fetcher's, which the loaded table counts against until release

	mu      sync.Mutex
	v       *rangeVerifier
	err     error         // permanent failure
	loading chan struct{} // closed when the load in progress ends
	lastErr error         // the last load's failure
	closed  bool          // released: a load that ends now gives its memory back
}

// verifier returns the blob's verifier, loading the table through f unless a load is in
// progress, which it waits for.
func (l *tableLoader) verifier(ctx context.Context, f *filler) (*rangeVerifier, error) {
	for {
		l.mu.Lock()
		if l.v != nil || l.err != nil {
			defer l.mu.Unlock()
			return l.v, l.err
		}
		ch := l.loading
		if ch == nil {
			ch = l.beginLocked()
			l.mu.Unlock()
			return l.run(f, ch)
		}
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("remotefetch: blob %s: range table: %w", f.dgst, ctx.Err())
		}
		l.mu.Lock()
		v, err, last := l.v, l.err, l.lastErr
		l.mu.Unlock()
		if v != nil || err != nil || last != nil {
			if v == nil && err == nil {
				return nil, last // the load this fetch waited for failed; the next one tries again
			}
			return v, err
		}
	}
}

// ready returns the verifier if the table is loaded, else nil; it does not wait.
func (l *tableLoader) ready() *rangeVerifier {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.v
}

// guessWiden widens [off, end) to whole chunks of the size convert writes by default, for a
// fetch that starts before the table is in: it is right for every table whose chunks are at
// most that size (all of convert's by default), and a fetch that guessed wrong is noticed
// once the table is in and made again (verifiedBody).
func (l *tableLoader) guessWiden(off, end int64) (int64, int64) {
	return widenBy(off, end, rangetable.DefaultChunk, l.offset, l.size)
}

// release gives the loaded table's memory back to the budget; the blob is closed.
func (l *tableLoader) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.v != nil {
		l.budget.give(int64(len(l.v.raw)))
		l.v = nil
	}
	l.err = ErrClosed
}

// start begins loading the table in the background, so that it is on its way when the first
// fetch needs it. It is called once, before the filler can close.
func (l *tableLoader) start(f *filler) {
	l.mu.Lock()
	ch := l.beginLocked()
	l.mu.Unlock()
	f.wg.Go(func() { _, _ = l.run(f, ch) })
}

// beginLocked marks a load as in progress; l.mu is held.
func (l *tableLoader) beginLocked() chan struct{} {
	l.loading = make(chan struct{})
	return l.loading
}

// run loads the table and ends the load marked by ch with the result.
func (l *tableLoader) run(f *filler, ch chan struct{}) (*rangeVerifier, error) {
	v, err := l.load(f)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err == nil && l.closed:
		l.budget.give(int64(len(v.raw))) // the blob closed meanwhile
		v, err = nil, ErrClosed
	case err == nil:
		l.v = v
	case isPermanent(err):
		l.err = err
	}
	l.lastErr, l.loading = err, nil
	close(ch)
	return l.v, err
}

// load fetches the table, with retries under the filler's read deadline, and checks it
// against its digest and the blob: it must cover exactly the bytes before it.
func (l *tableLoader) load(f *filler) (*rangeVerifier, error) {
	ctx, cancel := context.WithTimeout(f.ctx, f.opts.ReadTimeout)
	defer cancel()
	var err error
	mismatches := 0
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if !f.backoff(ctx, attempt) {
				return nil, fmt.Errorf("remotefetch: blob %s: range table: %w (last cause: %v)", f.dgst, ctx.Err(), err)
			}
		}
		var v *rangeVerifier
		v, err = l.loadOnce(ctx, f)
		if err == nil {
			return v, nil
		}
		f.failedAttempt(err)
		if err = f.mismatchLimit(err, &mismatches); isPermanent(err) || ctx.Err() != nil {
			return nil, err
		}
	}
}

func (l *tableLoader) loadOnce(ctx context.Context, f *filler) (v *rangeVerifier, err error) {
	n := l.size - l.offset
	if !l.budget.take(n) {
		return nil, permanent(fmt.Errorf("remotefetch: blob %s: range table of %d bytes: the %d bytes that open blobs' tables may hold in memory are taken (Options.RangeTableMemory)",
			f.dgst, n, l.budget.limit))
	}
	defer func() {
		if err != nil {
			l.budget.give(n)
		}
	}()
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	reset, stop := f.stallWatch(cancel)
	defer stop()
	rc, err := f.remote.get(actx, l.offset, n)
	if err != nil {
		return nil, withCause(actx, fmt.Errorf("remotefetch: blob %s: range table: %w", f.dgst, err))
	}
	defer rc.Close()
	raw := make([]byte, n)
	if _, err := io.ReadFull(&progressReader{r: rc, onProgress: reset}, raw); err != nil {
		return nil, withCause(actx, fmt.Errorf("remotefetch: blob %s: range table from %s: %w", f.dgst, sourceOf(rc), err))
	}
	if got := digest.Canonical.FromBytes(raw); got != l.table {
		return nil, fmt.Errorf("remotefetch: blob %s: range table (bytes %d-%d) from %s is %s, the image pins %s: %w",
			f.dgst, l.offset, l.size, sourceOf(rc), got, l.table, ErrRangeMismatch)
	}
	tbl, err := rangetable.Parse(raw)
	if err == nil && tbl.Covered() != l.offset {
		err = fmt.Errorf("covers %d bytes, but starts at %d", tbl.Covered(), l.offset)
	}
	if err != nil {
		// The image pins these bytes: no retry can fix them.
		return nil, permanent(fmt.Errorf("remotefetch: blob %s: range table: %w", f.dgst, err))
	}
	return &rangeVerifier{tbl: tbl, raw: raw, size: l.size}, nil
}
