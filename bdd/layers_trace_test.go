package bdd

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/layerblob"
	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/remotefetch"
	"github.com/obdproject/obd/zfile"
)

// TestTraceHoldsReadsOfOpenLayers: a layer acquired while a trace records enters the reads
// that opened it into the trace, whether it opens now (a cold node) or was open already
// (a node running the image): the two traces are the same.
func TestTraceHoldsReadsOfOpenLayers(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	blob := committedLayer(t)
	spec := LayerSpec{Ref: reg.Host + "/obd/app", Digest: reg.PushBlob(t, "obd/app", blob).String(), Size: int64(len(blob))}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	traceAcquire := func(pool *layerPool) blocktrace.Trace {
		t.Helper()
		pool.fetcher.StartTrace()
		l, err := pool.acquire(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		trace := pool.fetcher.StopTrace()
		if err := pool.release([]*openLayer{l}); err != nil {
			t.Fatal(err)
		}
		return trace
	}
	cold := traceAcquire(testPool(t))
	if len(cold.Blobs) != 1 || len(cold.Blobs[0].Ranges) == 0 {
		t.Fatalf("opening the layer on a cold pool traced %+v, want its header and index reads", cold)
	}

	warm := testPool(t)
	held, err := warm.acquire(ctx, spec) // a device of the image, attached before the trace
	if err != nil {
		t.Fatal(err)
	}
	defer warm.release([]*openLayer{held})
	if got := traceAcquire(warm); !sameRanges(got, cold) {
		t.Fatalf("acquiring the open layer traced %+v, want what opening it read: %+v", got, cold)
	}
}

func sameRanges(a, b blocktrace.Trace) bool {
	if len(a.Blobs) != len(b.Blobs) {
		return false
	}
	for i := range a.Blobs {
		if a.Blobs[i].Digest != b.Blobs[i].Digest || !slices.EqualFunc(a.Blobs[i].Ranges, b.Blobs[i].Ranges,
			func(x, y blocktrace.Range) bool { return x.Off == y.Off && x.Len == y.Len }) {
			return false
		}
	}
	return true
}

// testPool is a layer pool over a fetcher with a cache of its own.
func testPool(t *testing.T) *layerPool {
	t.Helper()
	f, err := remotefetch.New(remotefetch.Options{CacheDir: filepath.Join(t.TempDir(), "cache"), PlainHTTP: true, BackgroundDelay: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return newLayerPool(f)
}

// committedLayer returns a registry layer blob (tar of a ZFile LSMT layer) with some data.
func committedLayer(t *testing.T) []byte {
	t.Helper()
	w, err := lsmt.Create(filepath.Join(t.TempDir(), "upper"), lsmt.CreateOptions{VirtualSize: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := range 16 {
		if _, err := w.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 64<<10), int64(i)<<20); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	err = layerblob.Write(&out, layerblob.WriteOptions{ZFile: &zfile.Options{Algorithm: zfile.LZ4}, Tar: true, TempDir: t.TempDir()}, func(dst io.Writer) error {
		_, err := w.Commit(dst, lsmt.CommitOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}
