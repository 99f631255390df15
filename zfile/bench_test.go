package zfile

import (
	"bytes"
	"compress/gzip"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/pierrec/lz4/v4"
)

// benchRounds is how often each contender runs per benchmark iteration; the best round
// counts, which keeps the ratios steady even with -benchtime 1x. Rounds are short (a few
// ms) so that some of them run without being preempted on a busy machine.
const benchRounds = 25

// contest runs the contenders in turns for benchRounds rounds per benchmark iteration and
// returns, for each, the sum over iterations of its best round, so that a burst of load
// from other processes skews no ratio between them.
func contest(b *testing.B, contenders ...func()) []time.Duration {
	total := make([]time.Duration, len(contenders))
	for b.Loop() {
		best := make([]time.Duration, len(contenders))
		for round := range benchRounds {
			for i, f := range contenders {
				start := time.Now()
				f()
				if d := time.Since(start); round == 0 || d < best[i] {
					best[i] = d
				}
			}
		}
		for i := range total {
			total[i] += best[i]
		}
	}
	return total
}

// benchFile is a 4 MiB LZ4 4 KiB ZFile of data that compresses about 2.4x, with its raw
// content and its compressed blocks (CRCs stripped) for the bare-codec baselines.
type benchFile struct {
	raw, z []byte
	blocks [][]byte
}

func newBenchFile(b *testing.B) benchFile {
	raw := sampleData(4<<20, 1)
	z := compress(b, raw, Options{Algorithm: LZ4, BlockSize: 4096})
	zr := open(b, z)
	f := benchFile{raw: raw, z: z, blocks: make([][]byte, len(zr.lengths))}
	for i, l := range zr.lengths {
		start := zr.blockStart(i)
		f.blocks[i] = z[start : start+int64(l)-crcSize]
	}
	return f
}

// BenchmarkDecodeSequential decodes the bench file three ways in the same run and reports
// the ratios between them:
//   - x-vs-raw: ZFile ReadAt on one goroutine (1 MiB reads) against a bare loop of
//     lz4.UncompressBlock over the same blocks (target >= 0.85);
//   - x-parallel: one ZFile ReadAt of the whole 4 MiB with GOMAXPROCS decoders against
//     the one-goroutine ZFile figure (target >= 1.6 on 2 idle cores);
//   - x-parallel-raw: the bare loop split over GOMAXPROCS goroutines against the bare loop,
//     the speedup the machine offers during the run, to read x-parallel against.
func BenchmarkDecodeSequential(b *testing.B) {
	f := newBenchFile(b)
	seqReader := open(b, f.z, WithConcurrency(1))
	parReader := open(b, f.z)
	out := make([]byte, len(f.raw))
	rawBlocks := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := lz4.UncompressBlock(f.blocks[i], out[i*4096:min((i+1)*4096, len(out))]); err != nil {
				b.Error(err)
				return
			}
		}
	}
	rawLoop := func() { rawBlocks(0, len(f.blocks)) }
	// rawParallel splits the bare loop over GOMAXPROCS goroutines: the speedup the machine
	// offers right now, which a busy machine can push far below the core count.
	rawParallel := func() {
		var wg sync.WaitGroup
		procs := runtime.GOMAXPROCS(0)
		for w := range procs {
			wg.Go(func() { rawBlocks(w*len(f.blocks)/procs, (w+1)*len(f.blocks)/procs) })
		}
		wg.Wait()
	}
	readAll := func(zr *Reader, chunk int) func() {
		return func() {
			for off := 0; off < len(out); off += chunk {
				if _, err := zr.ReadAt(out[off:min(off+chunk, len(out))], int64(off)); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	t := contest(b, rawLoop, readAll(seqReader, 1<<20), readAll(parReader, len(out)), rawParallel)
	if !bytes.Equal(out, f.raw) {
		b.Fatal("decoded bytes differ")
	}
	b.ReportMetric(float64(len(f.z))/float64(len(f.raw)), "stored/raw")
	mbps := func(d time.Duration) float64 { return float64(len(out)) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(t[0]), "raw-MB/s")
	b.ReportMetric(mbps(t[1]), "seq-MB/s")
	b.ReportMetric(mbps(t[2]), "par-MB/s")
	b.ReportMetric(t[0].Seconds()/t[1].Seconds(), "x-vs-raw")
	b.ReportMetric(t[1].Seconds()/t[2].Seconds(), "x-parallel")
	b.ReportMetric(t[0].Seconds()/t[3].Seconds(), "x-parallel-raw")
	b.ReportMetric(float64(runtime.GOMAXPROCS(0)), "procs")
}

// BenchmarkRandomRead4K reads 4 KiB blocks in random order, as a block device does, and
// reports ZFile ReadAt against bare lz4.UncompressBlock of the same blocks (x-vs-raw), so
// the per-read cost of jump table, fetch, CRC and pooling shows.
func BenchmarkRandomRead4K(b *testing.B) {
	f := newBenchFile(b)
	zr := open(b, f.z)
	order := rand.New(rand.NewPCG(1, 2)).Perm(len(f.blocks))
	dst := make([]byte, 4096)
	rawLoop := func() {
		for _, i := range order {
			if _, err := lz4.UncompressBlock(f.blocks[i], dst); err != nil {
				b.Fatal(err)
			}
		}
	}
	zfileLoop := func() {
		for _, i := range order {
			if _, err := zr.ReadAt(dst, int64(i)*4096); err != nil {
				b.Fatal(err)
			}
		}
	}
	t := contest(b, rawLoop, zfileLoop)
	perRead := func(d time.Duration) float64 { return d.Seconds() / float64(b.N*len(order)) * 1e9 }
	b.ReportMetric(perRead(t[0]), "raw-ns/read")
	b.ReportMetric(perRead(t[1]), "zfile-ns/read")
	b.ReportMetric(t[0].Seconds()/t[1].Seconds(), "x-vs-raw")
}

// BenchmarkCompress writes the bench file's content as a ZFile and reports the Writer on
// one goroutine against a bare loop of the same LZ4 compressor (x-vs-raw), and the Writer
// with GOMAXPROCS goroutines against one (x-parallel).
func BenchmarkCompress(b *testing.B) {
	f := newBenchFile(b)
	var c lz4Compressor
	var dst []byte
	rawLoop := func() {
		for off := 0; off < len(f.raw); off += 4096 {
			var err error
			if dst, err = c.compress(dst[:0], f.raw[off:min(off+4096, len(f.raw))]); err != nil {
				b.Fatal(err)
			}
		}
	}
	writer := func(concurrency int) func() {
		return func() {
			zw, err := NewWriter(io.Discard, Options{Concurrency: concurrency})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := zw.Write(f.raw); err != nil {
				b.Fatal(err)
			}
			if err := zw.Close(); err != nil {
				b.Fatal(err)
			}
		}
	}
	t := contest(b, rawLoop, writer(1), writer(0))
	mbps := func(d time.Duration) float64 { return float64(len(f.raw)) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(t[0]), "raw-MB/s")
	b.ReportMetric(mbps(t[1]), "seq-MB/s")
	b.ReportMetric(mbps(t[2]), "par-MB/s")
	b.ReportMetric(t[0].Seconds()/t[1].Seconds(), "x-vs-raw")
	b.ReportMetric(t[1].Seconds()/t[2].Seconds(), "x-parallel")
}

// BenchmarkZstd64KVsGzip compares the size of the file named by OBD_BENCH_IMAGE (e.g. an
// unpacked image layer or filesystem) as a zstd 64 KiB ZFile with its size under gzip -6,
// the usual OCI layer compression (compress/gzip level 6), and reports zstd/gzip as
// x-size-vs-gzip.
func BenchmarkZstd64KVsGzip(b *testing.B) {
	path := os.Getenv("OBD_BENCH_IMAGE")
	if path == "" {
		b.Skip("OBD_BENCH_IMAGE is unset: set it to a file (e.g. an image's ext4 or layer tar) to compare with gzip -6")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		b.Fatalf("OBD_BENCH_IMAGE: %v", err)
	}
	var zSize, gzSize int
	for b.Loop() {
		zSize = len(compress(b, raw, Options{Algorithm: ZSTD, BlockSize: 65536}))
		var gz countingWriter
		w, err := gzip.NewWriterLevel(&gz, 6)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := w.Write(raw); err != nil {
			b.Fatal(err)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
		gzSize = int(gz)
	}
	b.ReportMetric(float64(len(raw)), "raw-bytes")
	b.ReportMetric(float64(zSize), "zfile-bytes")
	b.ReportMetric(float64(gzSize), "gzip-bytes")
	b.ReportMetric(float64(zSize)/float64(gzSize), "x-size-vs-gzip")
}

// countingWriter counts the bytes written to it.
type countingWriter int

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}
