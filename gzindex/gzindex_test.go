package gzindex

import (
	"bytes"
	"compress/gzip"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/obdproject/obd/rangetable"
)

// sample returns n bytes that compress somewhat, like a tar of text and binaries.
func sample(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	words := []string{"usr/lib/", "python3", "import ", "def ", "return ", "\x00\x00\x00\x00", "self.", "\n"}
	var b bytes.Buffer
	for b.Len() < n {
		if rng.IntN(10) == 0 {
			chunk := make([]byte, rng.IntN(2000))
			for i := range chunk {
				chunk[i] = byte(rng.Uint32())
			}
			b.Write(chunk)
			continue
		}
		b.WriteString(words[rng.IntN(len(words))])
	}
	return b.Bytes()[:n]
}

func gz(t testing.TB, level int, members ...[]byte) []byte {
	t.Helper()
	var out bytes.Buffer
	for _, m := range members {
		w, err := gzip.NewWriterLevel(&out, level)
		if err != nil {
			t.Fatal(err)
		}
		w.Name = "layer.tar"
		w.Write(m)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return out.Bytes()
}

// check builds an index of blob, round-trips its encoding and compares reads
// through it with want.
func check(t *testing.T, blob, want []byte, kind Kind, spacing int64) *Index {
	t.Helper()
	var stream bytes.Buffer
	x, err := Build(bytes.NewReader(blob), BuildOptions{Kind: kind, Spacing: spacing}, &stream)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stream.Bytes(), want) {
		t.Fatalf("build stream: %d bytes differ from the %d expected", stream.Len(), len(want))
	}
	if x.Size != int64(len(want)) || x.BlobSize != int64(len(blob)) {
		t.Fatalf("sizes %d/%d, want %d/%d", x.Size, x.BlobSize, len(want), len(blob))
	}
	y, err := Decode(x.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(y.Encode(), x.Encode()) {
		t.Fatal("encoding does not round-trip")
	}
	r := NewReader(bytes.NewReader(blob), y, ReaderOptions{CacheBytes: 3 * spacing})
	rng := rand.New(rand.NewPCG(uint64(len(blob)), 2))
	for k := 0; k < 200 && len(want) > 0; k++ {
		off := rng.Int64N(int64(len(want)))
		n := rng.IntN(int(min(3*spacing, int64(len(want))-off))) + 1
		got := make([]byte, n)
		if m, err := r.ReadAt(got, off); m != n || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", n, off, m, err)
		}
		if !bytes.Equal(got, want[off:off+int64(n)]) {
			t.Fatalf("ReadAt(%d, %d): wrong bytes", n, off)
		}
	}
	if _, err := r.ReadAt(make([]byte, 1), int64(len(want))); err != io.EOF {
		t.Fatalf("read at the end: %v, want io.EOF", err)
	}
	return y
}

func TestGzipRoundTrip(t *testing.T) {
	data := sample(1, 3<<20)
	for _, level := range []int{gzip.NoCompression, gzip.BestSpeed, gzip.DefaultCompression, gzip.BestCompression, gzip.HuffmanOnly} {
		x := check(t, gz(t, level, data), data, KindGzip, MinSpacing)
		if len(x.Spans) < 10 {
			t.Errorf("level %d: %d spans for 3 MiB at 64 KiB spacing", level, len(x.Spans))
		}
		for i, s := range x.Spans[1:] {
			if s.WindowLen() != WindowSize {
				t.Fatalf("span %d: window %d", i+1, s.WindowLen())
			}
		}
	}
}

func TestGzipMembersAndEdges(t *testing.T) {
	a, b := sample(2, 700<<10), sample(3, 300<<10)
	check(t, gz(t, 6, a, b, nil, a), append(append(append([]byte{}, a...), b...), a...), KindGzip, MinSpacing)
	check(t, gz(t, 6, nil), nil, KindGzip, MinSpacing)
	check(t, gz(t, 6, []byte("x")), []byte("x"), KindGzip, MinSpacing)
}

func TestRaw(t *testing.T) {
	data := sample(4, 1<<20+17)
	x := check(t, data, data, KindRaw, MinSpacing)
	if len(x.Spans) != 17 {
		t.Fatalf("%d spans, want 17", len(x.Spans))
	}
}

func TestBuildRejectsCorrupt(t *testing.T) {
	blob := gz(t, 6, sample(5, 200<<10))
	for name, b := range map[string][]byte{
		"trailing garbage": append(append([]byte{}, blob...), 1, 2, 3),
		"truncated":        blob[:len(blob)-20],
		"bad crc":          func() []byte { c := append([]byte{}, blob...); c[len(c)-6] ^= 1; return c }(),
		"not gzip":         []byte("plain text, not gzip at all"),
	} {
		if _, err := Build(bytes.NewReader(b), BuildOptions{Kind: KindGzip}, nil); err == nil {
			t.Errorf("%s: built", name)
		}
	}
}

func TestTamperedBlob(t *testing.T) {
	data := sample(6, 1<<20)
	blob := gz(t, 6, data)
	x, err := Build(bytes.NewReader(blob), BuildOptions{Kind: KindGzip, Spacing: MinSpacing}, nil)
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte{}, blob...)
	bad[len(bad)/2] ^= 0x40
	r := NewReader(bytes.NewReader(bad), x, ReaderOptions{})
	var failed bool
	for off := int64(0); off < x.Size; off += MinSpacing {
		if _, err := r.ReadAt(make([]byte, 100), off); err != nil {
			if !errors.Is(err, ErrMismatch) {
				t.Fatalf("error %v is not ErrMismatch", err)
			}
			failed = true
		}
	}
	if !failed {
		t.Fatal("a tampered blob read without error")
	}
}

func TestHostileIndex(t *testing.T) {
	data := sample(7, 600<<10)
	blob := gz(t, 6, data)
	x, err := Build(bytes.NewReader(blob), BuildOptions{Kind: KindGzip, Spacing: MinSpacing}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(y *Index)) error {
		y, _ := Decode(x.Encode())
		f(y)
		_, err := Decode(y.Encode())
		return err
	}
	for name, tc := range map[string]struct {
		f    func(y *Index)
		want string
	}{
		"checkpoint outside the blob": {func(y *Index) { y.Spans[2].InBit = y.BlobSize*8 + 5 }, "outside the blob"},
		"short window":                {func(y *Index) { y.Spans[1].windowLen = 100 }, "window"},
		"unordered":                   {func(y *Index) { y.Spans[1], y.Spans[2] = y.Spans[2], y.Spans[1] }, "does not follow"},
		"first span moved":            {func(y *Index) { y.Spans[0].InBit = 8 }, "blob's start"},
		"huge span":                   {func(y *Index) { y.Size = y.Spans[len(y.Spans)-1].Out + MaxSpanBytes + 1 }, "over"},
		"unknown kind":                {func(y *Index) { y.Kind = 9 }, "kind"},
		"table of another blob": {func(y *Index) {
			b, _ := rangetable.NewBuilder(DefaultChunk)
			b.Write(blob[:100])
			y.table = b.Table()
		}, "range table covers"},
		"no table": {func(y *Index) { y.table = nil }, "range table"},
	} {
		err := mutate(tc.f)
		if !errors.Is(err, ErrBadIndex) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrBadIndex mentioning %q", name, err, tc.want)
		}
	}
	enc := x.Encode()
	for _, cut := range []int{0, 7, headerSize, headerSize + 3, len(enc) - 1} {
		if _, err := Decode(enc[:cut]); !errors.Is(err, ErrBadIndex) {
			t.Errorf("cut at %d: %v", cut, err)
		}
	}
	// A compressed window that inflates to another length than its record says is
	// refused when a read needs it.
	y, _ := Decode(x.Encode())
	y.Spans[1].packed = (&Span{Window: make([]byte, 100)}).packWindow()
	if _, err := Decode(y.Encode()); err != nil {
		t.Fatal(err)
	}
	r := NewReader(bytes.NewReader(blob), y, ReaderOptions{})
	if _, err := r.ReadAt(make([]byte, 10), y.Spans[1].Out); !errors.Is(err, ErrBadIndex) {
		t.Fatalf("short compressed window: %v, want ErrBadIndex", err)
	}

	// A checkpoint moved to a wrong bit inside the blob decodes to garbage or
	// fails: the reader must report a mismatch, never wrong bytes.
	y, _ = Decode(x.Encode())
	y.Spans[2].InBit += 3
	if _, err := Decode(y.Encode()); err != nil {
		t.Fatal(err)
	}
	r = NewReader(bytes.NewReader(blob), y, ReaderOptions{})
	got := make([]byte, 10)
	if _, err := r.ReadAt(got, y.Spans[2].Out); !errors.Is(err, ErrMismatch) {
		t.Fatalf("moved checkpoint: %v, want ErrMismatch", err)
	}
}

// countingReaderAt counts ReadAt calls and the bytes they read, and fails
// the test if a byte is read twice.
type countingReaderAt struct {
	t *testing.T
	r io.ReaderAt
	sync.Mutex
	calls int
	bytes int64
	seen  map[int64]bool // chunk-sized pieces read, by offset
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.Lock()
	c.calls++
	c.bytes += int64(len(p))
	if c.seen != nil {
		for o := off; o < off+int64(len(p)); o += DefaultChunk {
			if c.seen[o] {
				c.t.Errorf("blob bytes at %d read twice", o)
			}
			c.seen[o] = true
		}
	}
	c.Unlock()
	return c.r.ReadAt(p, off)
}

// TestOpenReadsWindowsLazily: an opened index reads its head, then only the
// windows of the spans read.
func TestOpenReadsWindowsLazily(t *testing.T) {
	data := sample(9, 1<<20)
	blob := gz(t, 6, data)
	x, err := Build(bytes.NewReader(blob), BuildOptions{Kind: KindGzip, Spacing: MinSpacing}, nil)
	if err != nil {
		t.Fatal(err)
	}
	enc := x.Encode()
	idx := &countingReaderAt{t: t, r: bytes.NewReader(enc)}
	y, err := Open(idx, int64(len(enc)), "test index")
	if err != nil {
		t.Fatal(err)
	}
	if idx.bytes != y.HeadSize() || len(y.Spans) < 8 {
		t.Fatalf("open read %d bytes, head is %d (%d spans)", idx.bytes, y.HeadSize(), len(y.Spans))
	}
	r := NewReader(bytes.NewReader(blob), y, ReaderOptions{})
	got := make([]byte, 100)
	if _, err := r.ReadAt(got, y.Spans[5].Out+10); err != nil || !bytes.Equal(got, data[y.Spans[5].Out+10:][:100]) {
		t.Fatalf("read: %v", err)
	}
	if want := y.HeadSize() + int64(y.Spans[5].packedLen); idx.bytes != want {
		t.Fatalf("index bytes read %d, want the head and one window, %d", idx.bytes, want)
	}
}

func TestSpanCursor(t *testing.T) {
	data := sample(8, 2<<20)
	blob := gz(t, 6, data)
	x, err := Build(bytes.NewReader(blob), BuildOptions{Kind: KindGzip, Spacing: 1 << 20}, nil)
	if err != nil {
		t.Fatal(err)
	}
	start, end := x.stored(0)
	// Concurrent sequential reads through most of a span fetch each chunk once
	// and no more than the span.
	c := &countingReaderAt{t: t, r: bytes.NewReader(blob), seen: map[int64]bool{}}
	r := NewReader(c, x, ReaderOptions{CacheBytes: 4 << 20})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := int64(0); off < 800<<10; off += 4096 {
				got := make([]byte, 4096)
				if _, err := r.ReadAt(got, off); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(got, data[off:off+4096]) {
					t.Errorf("wrong bytes at %d", off)
					return
				}
			}
		}()
	}
	wg.Wait()
	if c.bytes > end-start+DefaultChunk {
		t.Fatalf("%d blob bytes read for a span of %d", c.bytes, end-start)
	}
	// A small read at a span's start fetches a fraction of the span.
	c = &countingReaderAt{t: t, r: bytes.NewReader(blob)}
	r = NewReader(c, x, ReaderOptions{})
	if _, err := r.ReadAt(make([]byte, 4096), x.Spans[1].Out); err != nil {
		t.Fatal(err)
	}
	start, end = x.stored(1)
	if c.calls != 1 || c.bytes > (end-start)/4 {
		t.Fatalf("a 4 KiB read at a span's start: %d reads, %d bytes of a %d-byte span", c.calls, c.bytes, end-start)
	}
	// A small cache evicts: reading every span and then the first again reads it again.
	r = NewReader(c, x, ReaderOptions{CacheBytes: 1})
	c.calls = 0
	for i := range x.Spans {
		r.ReadAt(make([]byte, 1), x.Spans[i].Out)
	}
	r.ReadAt(make([]byte, 1), 0)
	if c.calls != len(x.Spans)+1 {
		t.Fatalf("%d blob reads, want %d", c.calls, len(x.Spans)+1)
	}
}

// TestSparseWindows: Build keeps of each window only the bytes the span's
// decoding copies; the rest are zero, and reads through the index still give
// the stream's bytes.
func TestSparseWindows(t *testing.T) {
	data := sample(10, 1<<20)
	blob := gz(t, 6, data)
	x, err := Build(bytes.NewReader(blob), BuildOptions{Kind: KindGzip, Spacing: MinSpacing}, nil)
	if err != nil {
		t.Fatal(err)
	}
	zeroed := 0
	for _, s := range x.Spans[1:] {
		base := s.Out - int64(len(s.Window))
		for i, b := range s.Window {
			switch want := data[base+int64(i)]; {
			case b == 0 && want != 0:
				zeroed++
			case b != want:
				t.Fatalf("span at %d: window byte %d is %d, the stream's is %d", s.Out, i, b, want)
			}
		}
	}
	if zeroed == 0 {
		t.Fatal("no window byte was left out")
	}
	y, err := Decode(x.Encode())
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := NewReader(bytes.NewReader(blob), y, ReaderOptions{}).ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read through sparse windows: %v", err)
	}
}

// TestWindowRanges: the windows a read of blob ranges needs are those of the
// spans the ranges touch, and reading the stream through an index whose other
// windows are unreadable works.
func TestWindowRanges(t *testing.T) {
	data := sample(13, 1<<20)
	blob := gz(t, 6, data)
	x, err := Build(bytes.NewReader(blob), BuildOptions{Kind: KindGzip, Spacing: MinSpacing}, nil)
	if err != nil {
		t.Fatal(err)
	}
	enc := x.Encode()
	y, err := Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	start, _ := y.stored(4)
	_, end := y.stored(5)
	got := y.WindowRanges([][2]int64{{start + 10, end - start - 20}, {start + 1, 1}})
	want := [2]int64{y.Spans[4].packedOff, int64(y.Spans[4].packedLen + y.Spans[5].packedLen)}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("window ranges %v, want %v (spans 4 and 5, merged)", got, want)
	}
	if r := y.WindowRanges([][2]int64{{0, 100}}); len(r) != 0 {
		t.Fatalf("span 0 has no window, got %v", r)
	}
	// An index whose bytes outside those ranges (and the head) are zero still
	// reads spans 4 and 5.
	holes := make([]byte, len(enc))
	copy(holes, enc[:y.HeadSize()])
	copy(holes[want[0]:], enc[want[0]:want[0]+want[1]])
	z, err := Open(bytes.NewReader(holes), int64(len(holes)), "holes")
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, y.spanEnd(5)-y.Spans[4].Out)
	if _, err := NewReader(bytes.NewReader(blob), z, ReaderOptions{}).ReadAt(out, y.Spans[4].Out); err != nil || !bytes.Equal(out, data[y.Spans[4].Out:y.spanEnd(5)]) {
		t.Fatalf("read of spans 4-5 with their windows alone: %v", err)
	}
}

// withHeader returns a gzip member of payload whose header has flags flg and the given
// extra, name and comment fields, and a CRC16 (FHCRC) of crcDelta plus the right one.
func withHeader(t *testing.T, flg byte, extra []byte, name, comment string, crcDelta uint16, payload []byte) []byte {
	t.Helper()
	h := []byte{0x1f, 0x8b, 8, flg, 0, 0, 0, 0, 0, 0xff}
	if flg&4 != 0 {
		h = append(h, byte(len(extra)), byte(len(extra)>>8))
		h = append(h, extra...)
	}
	if flg&8 != 0 {
		h = append(append(h, name...), 0)
	}
	if flg&16 != 0 {
		h = append(append(h, comment...), 0)
	}
	if flg&2 != 0 {
		c := uint16(crc32.ChecksumIEEE(h)) + crcDelta
		h = append(h, byte(c), byte(c>>8))
	}
	body := gz(t, 6, payload)
	return append(h, body[10+len("layer.tar")+1:]...) // gz's header has FNAME only
}

// Headers are read as compress/gzip reads them: every field skipped, the CRC16 checked, a
// name or comment of 512 bytes or more refused.
func TestMemberHeaderFields(t *testing.T) {
	payload := sample(9, 70<<10)
	long := strings.Repeat("n", 512)
	for _, tc := range []struct {
		name string
		blob []byte
		ok   bool
	}{
		{"all fields", withHeader(t, 2|4|8|16, []byte("xy\x00z"), "layer.tar", "a comment", 0, payload), true},
		{"bad CRC16", withHeader(t, 2|8, nil, "layer.tar", "", 1, payload), false},
		{"511-byte name", withHeader(t, 8, nil, long[:511], "", 0, payload), true},
		{"512-byte name", withHeader(t, 8, nil, long, "", 0, payload), false},
		{"512-byte comment", withHeader(t, 16, nil, "", long, 0, payload), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got bytes.Buffer
			_, err := Build(bytes.NewReader(tc.blob), BuildOptions{Kind: KindGzip, Spacing: MinSpacing}, &got)
			zr, zerr := gzip.NewReader(bytes.NewReader(tc.blob))
			if zerr == nil {
				_, zerr = io.ReadAll(zr)
			}
			if (err == nil) != tc.ok || (zerr == nil) != tc.ok {
				t.Fatalf("Build: %v, compress/gzip: %v; want accepted %v", err, zerr, tc.ok)
			}
			if tc.ok && !bytes.Equal(got.Bytes(), payload) {
				t.Fatal("stream differs from the payload")
			}
			if !tc.ok && !errors.Is(err, errCorrupt) {
				t.Fatalf("error %v does not say the stream is corrupt", err)
			}
		})
	}
}
