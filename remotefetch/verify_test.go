package remotefetch

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/rangetable"
)

// withTable is payload followed by its range table, as convert writes a layer blob, and the
// table's pin.
func withTable(t testing.TB, payload []byte, chunk int64) (blob []byte, table digest.Digest, offset int64) {
	t.Helper()
	b, err := rangetable.NewBuilder(chunk)
	if err != nil {
		t.Fatal(err)
	}
	b.Write(payload)
	tbl := b.Table()
	return append(bytes.Clone(payload), tbl...), digest.FromBytes(tbl), int64(len(payload))
}

// evil is data with one byte changed in every 5000.
func evil(data []byte) []byte {
	out := bytes.Clone(data)
	for i := 0; i < len(out); i += 5000 {
		out[i] ^= 0x5a
	}
	return out
}

func readAll(b *Blob) ([]byte, error) {
	buf := make([]byte, b.Size())
	_, err := b.ReadAt(buf, 0)
	return buf, err
}

// An image from a hostile registry has the same layer digest as one from an honest registry.
// The honest image's reads must get the honest bytes, whichever image reads first, whether
// the hostile image pins a table of its own bytes, the honest table, or none, and also after
// a restart over the same cache.
func TestHostileRegistryBytesNeverServeAnotherImage(t *testing.T) {
	payload := randomBytes(11, 5*testUnit+1234)
	honest, table, offset := withTable(t, payload, rangetable.DefaultChunk)
	hostileBlob, hostileTable, _ := withTable(t, evil(payload), rangetable.DefaultChunk)
	reg := testregistry.Start(t, testregistry.Options{})
	dgst := reg.PushBlob(t, "obd/honest", honest)
	bad := testregistry.StartHostile(t)
	bad.Serve("evil/app", dgst, hostileBlob)
	honestRef, badRef := reg.Host+"/obd/honest:v1", bad.Host+"/evil/app:v1"

	for _, c := range []struct {
		name     string
		badOpts  []OpenOption // how the hostile image pins the layer
		goodOpts []OpenOption
	}{
		{"hostile pins its own table", []OpenOption{WithRangeTable(hostileTable, offset)}, []OpenOption{WithRangeTable(table, offset)}},
		{"hostile has no table", nil, []OpenOption{WithRangeTable(table, offset)}},
		{"neither has a table", nil, nil},
		{"hostile pins the honest table", []OpenOption{WithRangeTable(table, offset)}, []OpenOption{WithRangeTable(table, offset)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			f := newFetcher(t, Options{CacheDir: dir, ReadTimeout: 5e9})
			evilB, err := f.Open(t.Context(), badRef, dgst, int64(len(honest)), c.badOpts...)
			if err != nil {
				t.Fatal(err)
			}
			got, err := readAll(evilB) // the hostile image reads first: its bytes are cached, if any pass
			if err == nil && bytes.Equal(got, honest) {
				t.Fatal("the hostile registry served honest bytes: the test proves nothing")
			}
			good, err := f.Open(t.Context(), honestRef, dgst, int64(len(honest)), c.goodOpts...)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := readAll(good); err != nil || !bytes.Equal(got, honest) {
				t.Fatalf("the honest image read other bytes (err %v)", err)
			}
			good.Close()
			evilB.Close()
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}

			// A restart over the same cache, the honest image first now, with the hostile
			// one open beside it.
			f = newFetcher(t, Options{CacheDir: dir, ReadTimeout: 5e9})
			evilB, err = f.Open(t.Context(), badRef, dgst, int64(len(honest)), c.badOpts...)
			if err != nil {
				t.Fatal(err)
			}
			defer evilB.Close()
			_, _ = readAll(evilB)
			good, err = f.Open(t.Context(), honestRef, dgst, int64(len(honest)), c.goodOpts...)
			if err != nil {
				t.Fatal(err)
			}
			defer good.Close()
			if got, err := readAll(good); err != nil || !bytes.Equal(got, honest) {
				t.Fatalf("after a restart the honest image read other bytes (err %v)", err)
			}
		})
	}
}

// A range whose bytes fail their check is fetched again a few times, then the read fails with
// an error naming the blob, the range and the registry; the other ranges read fine, and the bad
// bytes reach neither the reader nor the cache.
func TestRangeMismatchNamesBlobRangeAndRegistry(t *testing.T) {
	payload := randomBytes(12, 4*testUnit)
	honest, table, offset := withTable(t, payload, rangetable.DefaultChunk)
	corrupt := bytes.Clone(honest)
	corrupt[2*testUnit+100] ^= 1 // in unit 2 only
	bad := testregistry.StartHostile(t)
	dgst := digest.FromBytes(honest)
	bad.Serve("team/app", dgst, corrupt)
	f := newFetcher(t, Options{ReadTimeout: 5e9})
	b, err := f.Open(t.Context(), bad.Host+"/team/app:v1", dgst, int64(len(honest)), WithRangeTable(table, offset))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := checkRead(t, b, honest, 0, 2*testUnit); err != nil {
		t.Fatalf("a good range: %v", err)
	}
	before := bad.BlobGets()
	buf := make([]byte, 4096)
	_, err = b.ReadAt(buf, 2*testUnit+100) // not sequential: no readahead
	if !errors.Is(err, ErrRangeMismatch) {
		t.Fatalf("reading the corrupt range: %v, want ErrRangeMismatch", err)
	}
	for _, want := range []string{dgst.String(), fmt.Sprintf("bytes %d-%d", 2*testUnit, 2*testUnit+rangetable.DefaultChunk), bad.Host} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if n := bad.BlobGets() - before; n != maxMismatches {
		t.Errorf("the corrupt range was fetched %d times, want %d", n, maxMismatches)
	}
	if b.entry.HasRange(2*testUnit, 2*testUnit+1) {
		t.Error("the corrupt unit is in the cache")
	}
	if err := checkRead(t, b, honest, 3*testUnit, testUnit); err != nil {
		t.Fatalf("a good range after the bad one: %v", err)
	}
}

// A table that does not match the pinned digest fails every read, naming the registry.
func TestWrongRangeTableFailsReads(t *testing.T) {
	payload := randomBytes(13, 2*testUnit)
	honest, table, offset := withTable(t, payload, rangetable.DefaultChunk)
	_, otherTable, _ := withTable(t, evil(payload), rangetable.DefaultChunk)
	reg := testregistry.Start(t, testregistry.Options{})
	dgst := reg.PushBlob(t, "obd/app", honest)
	f := newFetcher(t, Options{ReadTimeout: 5e9})
	b, err := f.Open(t.Context(), reg.Host+"/obd/app:v1", dgst, int64(len(honest)), WithRangeTable(otherTable, offset))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = b.ReadAt(make([]byte, 10), 0)
	if !errors.Is(err, ErrRangeMismatch) || !strings.Contains(err.Error(), reg.Host) || !strings.Contains(err.Error(), "range table") {
		t.Fatalf("read with a wrong table pinned: %v", err)
	}
	_ = table
}

// Reads, unit fills and exact range fills of every size and alignment return the blob's bytes
// when the fill unit is smaller than the table's chunks and the blob ends in a short chunk,
// for tables whose chunks are smaller than, as large as and larger than the guess a fetch
// makes before the table is in.
func TestVerifiedReadsAnyAlignment(t *testing.T) {
	for _, chunk := range []int64{rangetable.MinChunk, rangetable.DefaultChunk, 4 * rangetable.DefaultChunk} {
		t.Run(fmt.Sprint(chunk), func(t *testing.T) {
			payload := randomBytes(14, int(3*chunk+5000))
			honest, table, offset := withTable(t, payload, chunk)
			reg := testregistry.Start(t, testregistry.Options{})
			dgst := reg.PushBlob(t, "obd/app", honest)
			f := newFetcher(t, Options{FillUnit: 4096, ReadTimeout: 5e9})
			b, err := f.Open(t.Context(), reg.Host+"/obd/app:v1", dgst, int64(len(honest)), WithRangeTable(table, offset))
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			size := int64(len(honest))
			if err := b.FillRange(t.Context(), 5000, 3000); err != nil {
				t.Fatal(err)
			}
			for _, r := range [][2]int64{{5000, 3000}, {0, 1}, {offset - 10, 20}, {size - 7, 7}, {size / 3, size / 2}, {offset, size - offset}, {0, size}} {
				if err := checkRead(t, b, honest, r[0], r[1]); err != nil {
					t.Fatalf("read %d+%d: %v", r[0], r[1], err)
				}
			}
			if err := b.Verify(t.Context()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestRequireVerifiedRefusesBlobsWithoutTable(t *testing.T) {
	f := newFetcher(t, Options{RequireVerified: true})
	d := digest.FromString("x")
	if _, err := f.Open(t.Context(), "127.0.0.1:1/a/b", d, 100); !errors.Is(err, ErrUnverified) {
		t.Fatalf("Open without a table: %v, want ErrUnverified", err)
	}
	for _, o := range []OpenOption{WithRangeTable("sha256:nope", 10), WithRangeTable(d, 100), WithRangeTable(d, -1)} {
		if _, err := f.Open(t.Context(), "127.0.0.1:1/a/b", d, 100, o); err == nil {
			t.Fatal("Open with a bad table pin succeeded")
		}
	}
	b, err := f.Open(t.Context(), "127.0.0.1:1/a/b", d, 100, WithRangeTable(d, 60))
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	// A caller that checks every range itself (an indexed layer's seek index) may open one.
	b, err = f.Open(t.Context(), "127.0.0.1:1/a/b", d, 100, WithCallerChecks())
	if err != nil {
		t.Fatalf("Open with caller checks: %v", err)
	}
	b.Close()
}

// A blob without a table that was read whole from one repository and matched its digest
// serves every image, from the cache: another registry is not even asked.
func TestVerifiedWholeBlobIsShared(t *testing.T) {
	data := randomBytes(15, 3*testUnit)
	reg := testregistry.Start(t, testregistry.Options{})
	dgst := reg.PushBlob(t, "obd/app", data)
	bad := testregistry.StartHostile(t)
	bad.Serve("evil/app", dgst, evil(data))
	f := newFetcher(t, Options{ReadTimeout: 5e9})
	b, err := f.Open(t.Context(), reg.Host+"/obd/app:v1", dgst, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Verify(t.Context()); err != nil {
		t.Fatal(err)
	}
	b.Close()
	other, err := f.Open(t.Context(), bad.Host+"/evil/app:v1", dgst, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if got, err := readAll(other); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the verified blob did not serve another repository (%v)", err)
	}
	if n := bad.BlobGets(); n != 0 {
		t.Errorf("the other registry was asked %d times for a blob the cache holds verified", n)
	}
}

// Range tables in memory count against Options.RangeTableMemory: a blob whose table would
// pass it fails its reads, naming the bound, until another blob's table is released.
func TestRangeTableMemoryIsBounded(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	type pinned struct {
		data   []byte
		dgst   digest.Digest
		table  digest.Digest
		offset int64
	}
	var blobs []pinned
	for i := range 2 {
		data, table, offset := withTable(t, randomBytes(uint64(30+i), 64*rangetable.MinChunk), rangetable.MinChunk)
		blobs = append(blobs, pinned{data, reg.PushBlob(t, "obd/app", data), table, offset})
	}
	tableSize := int64(len(blobs[0].data)) - blobs[0].offset
	f := newFetcher(t, Options{ReadTimeout: 5e9, RangeTableMemory: tableSize + tableSize/2})
	open := func(p pinned) *Blob {
		b, err := f.Open(t.Context(), reg.Host+"/obd/app:v1", p.dgst, int64(len(p.data)), WithRangeTable(p.table, p.offset))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	first := open(blobs[0])
	if err := checkRead(t, first, blobs[0].data, 0, 100); err != nil {
		t.Fatal(err)
	}
	second := open(blobs[1])
	if _, err := second.ReadAt(make([]byte, 100), 0); err == nil || !strings.Contains(err.Error(), "RangeTableMemory") {
		t.Fatalf("a table past the bound: %v", err)
	}
	second.Close()
	first.Close()
	second = open(blobs[1])
	defer second.Close()
	if err := checkRead(t, second, blobs[1].data, 0, 100); err != nil {
		t.Fatalf("after the first blob closed: %v", err)
	}
}

// TestRequireVerifiedReplaysCallerCheckedBlobs: under RequireVerified a trace replay may fill a
// blob without a table only while a caller that checks its ranges (an indexed layer) has it
// open; otherwise it is refused like any open.
func TestRequireVerifiedReplaysCallerCheckedBlobs(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 8*testUnit, true)
	f := newFetcher(t, Options{RequireVerified: true})
	tr := blocktrace.Trace{Blobs: []blocktrace.Blob{{Ref: e.ref, Digest: e.dgst, Size: int64(len(e.data)),
		Ranges: []blocktrace.Range{{Off: 100, Len: 3000, First: 1}}}}}
	if err := f.Prefetch(t.Context(), tr); !errors.Is(err, ErrUnverified) {
		t.Fatalf("replay of a blob no checking caller has open: %v, want ErrUnverified", err)
	}
	b, err := f.Open(t.Context(), e.ref, e.dgst, int64(len(e.data)), WithCallerChecks())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := f.Prefetch(t.Context(), tr); err != nil {
		t.Fatalf("replay beside a checking caller: %v", err)
	}
	if got := b.Stats().BytesFetched; got != 3000 {
		t.Fatalf("replay fetched %d bytes, want the traced 3000", got)
	}
}
