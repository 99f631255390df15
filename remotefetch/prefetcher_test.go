package remotefetch

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/internal/testregistry"
)

// TestPrefetcherReadsQuietly: a prefetcher's sequential reads fetch exactly the units they
// read (no readahead), stay out of a running trace, and do not break the sequential run
// of the workload's own reads interleaved with them.
func TestPrefetcherReadsQuietly(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 64*testUnit, true)
	f := newFetcher(t, Options{MaxRequestSize: 32 * testUnit, BackgroundDelay: -1})
	b := open(t, f, e)
	defer b.Close()
	f.StartTrace()
	quiet := b.Prefetcher()
	buf := make([]byte, testUnit)
	for u := int64(0); u < 8; u++ {
		if _, err := quiet.ReadAt(buf, u*testUnit); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, e.data[u*testUnit:(u+1)*testUnit]) {
			t.Fatalf("prefetcher read of unit %d: wrong bytes", u)
		}
	}
	waitForIdle(t, b)
	if got, want := b.Stats().BytesFetched, uint64(8*testUnit); got != want {
		t.Fatalf("8 sequential prefetcher reads of a unit fetched %d bytes, want %d (no readahead)", got, want)
	}
	if tr := f.StopTrace(); len(tr.Blobs) != 0 {
		t.Fatalf("prefetcher reads entered the trace: %+v", tr)
	}

	// A workload reading sequentially from unit 40 keeps its readahead while a prefetcher
	// reads elsewhere between its reads.
	for i, off := range []int64{40 * testUnit, 41 * testUnit, 42 * testUnit, 43 * testUnit} {
		if err := checkRead(t, b, e.data, off, testUnit); err != nil {
			t.Fatal(err)
		}
		if _, err := quiet.ReadAt(buf, int64(20+i)*testUnit); err != nil {
			t.Fatal(err)
		}
	}
	waitForIdle(t, b)
	if len(b.entry.Missing(44, 47)) != 0 {
		t.Fatal("the workload's sequential reads started no readahead past unit 43")
	}
}

// TestReadaheadMustBeEarned: sequential reads through units a replay has filled start no
// readahead (the replay chose what to fetch); reading on past them, into units no one has
// fetched, does.
func TestReadaheadMustBeEarned(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 64*testUnit, true)
	f := newFetcher(t, Options{MaxRequestSize: 32 * testUnit, BackgroundDelay: -1})
	b := open(t, f, e)
	defer b.Close()
	if err := b.Fill(t.Context(), 0, 8*testUnit); err != nil {
		t.Fatal(err)
	}
	for u := int64(0); u < 8; u++ {
		if err := checkRead(t, b, e.data, u*testUnit, testUnit); err != nil {
			t.Fatal(err)
		}
	}
	waitForIdle(t, b)
	if got, want := b.Stats().BytesFetched, uint64(8*testUnit); got != want {
		t.Fatalf("sequential reads of 8 filled units: %d bytes fetched, want the %d filled (no readahead)", got, want)
	}
	for u := int64(8); u < 12; u++ {
		if err := checkRead(t, b, e.data, u*testUnit, testUnit); err != nil {
			t.Fatal(err)
		}
	}
	waitForIdle(t, b)
	if len(b.entry.Missing(12, 13)) != 0 {
		t.Fatal("sequential reads into units no one had fetched started no readahead")
	}
}

// TestTraceRecordsFirstRead: a trace numbers its ranges by when they were first read, merged
// ranges keep the earliest number, and the numbers survive writing and reading the trace.
func TestTraceRecordsFirstRead(t *testing.T) {
	e := newEnv(t, testregistry.Options{}, 32*testUnit, false)
	f := newFetcher(t, Options{BackgroundDelay: -1})
	b := open(t, f, e)
	defer b.Close()
	f.StartTrace()
	for _, u := range []int64{20, 3, 21} {
		if err := checkRead(t, b, e.data, u*testUnit, testUnit); err != nil {
			t.Fatal(err)
		}
	}
	enc, err := f.StopTrace().Encode()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := blocktrace.Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	want := []blocktrace.Range{{Off: 3 * testUnit, Len: testUnit, First: 2}, {Off: 20 * testUnit, Len: 2 * testUnit, First: 1}}
	if len(tr.Blobs) != 1 || !slices.Equal(tr.Blobs[0].Ranges, want) {
		t.Fatalf("trace ranges %+v, want %+v", tr.Blobs, want)
	}
}

// TestBackgroundFillGivesUp: background fill of a blob whose registry fails every request
// (transiently, as a 503 says) stops after backgroundRetries tries of a chunk, pausing
// between them, instead of retrying for ever.
func TestBackgroundFillGivesUp(t *testing.T) {
	b := failingBlob(t, 8*testUnit, 100*time.Millisecond)
	done := make(chan error, 1)
	go func() { done <- b.fill.(*filler).backgroundFill() }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "background fill") {
			t.Fatalf("backgroundFill: %v, want it to give up with an error", err)
		}
	case <-time.After(time.Minute): // a hang guard: the retries take a few seconds
		t.Fatal("background fill was still retrying after a minute")
	}
}
