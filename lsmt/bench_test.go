package lsmt

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// benchLayers commits n layers of scattered 4–64 KiB writes over a 64 MiB
// disk into files under dir, plus one layer merged from all of them.
func benchLayers(b *testing.B, dir string, n int) (lower []Layer, single *File) {
	const vsize = 64 << 20
	rng := rand.New(rand.NewPCG(1, 1))
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	for i := range n {
		w, err := Create(filepath.Join(dir, fmt.Sprint("rw", i)), CreateOptions{VirtualSize: vsize})
		if err != nil {
			b.Fatal(err)
		}
		for range 256 {
			size := (1 + rng.IntN(16)) * 4096
			off := int64(rng.IntN((vsize-size)/4096)) * 4096
			if _, err := w.WriteAt(buf[:size], off); err != nil {
				b.Fatal(err)
			}
		}
		lower = append(lower, commitToFile(b, w, filepath.Join(dir, fmt.Sprint("layer", i)), CommitOptions{}))
		w.Close()
	}
	out, err := os.Create(filepath.Join(dir, "merged"))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := Merge(lower, out, CommitOptions{}); err != nil {
		b.Fatal(err)
	}
	return lower, openFile(b, out)
}

// compareABBA times subject and baseline over batches of batch operations,
// perOp operations per benchmark op, in ABBA order so that drift and cache
// warmth hit both alike. prepare runs before each pair (untimed choices such
// as offsets). It reports ns per operation of each and, as metric, the
// median over pairs of baseline time / subject time: the subject's speed as
// a fraction of the baseline's, robust to bursts of load from other processes.
func compareABBA(b *testing.B, batch, perOp int, prepare func(), subject, baseline func(), metric string) {
	timed := func(op func()) time.Duration {
		start := time.Now()
		for range batch {
			op()
		}
		return time.Since(start)
	}
	var subjectTime, baselineTime time.Duration
	var ratios []float64
	b.ResetTimer()
	for range b.N {
		for k := range perOp / batch {
			prepare()
			var s, base time.Duration
			if k%2 == 0 {
				s, base = timed(subject), timed(baseline)
			} else {
				base, s = timed(baseline), timed(subject)
			}
			subjectTime += s
			baselineTime += base
			ratios = append(ratios, float64(base)/float64(s))
		}
	}
	ops := float64(b.N * perOp / batch * batch)
	b.ReportMetric(float64(subjectTime.Nanoseconds())/ops, "ns/op-subject")
	b.ReportMetric(float64(baselineTime.Nanoseconds())/ops, "ns/op-baseline")
	slices.Sort(ratios)
	b.ReportMetric(ratios[len(ratios)/2], metric)
}

// BenchmarkStackRandomRead compares random 4 KiB reads through a 10-layer
// stack (subject) with reads of the same data from one merged layer
// (baseline), all plain files in the page cache. x-vs-1layer is the stack's
// throughput as a fraction of the single layer's.
func BenchmarkStackRandomRead(b *testing.B) {
	dir := b.TempDir()
	lower, single := benchLayers(b, dir, 10)
	upper, err := Create(filepath.Join(dir, "upper"), CreateOptions{VirtualSize: single.VirtualSize()})
	if err != nil {
		b.Fatal(err)
	}
	defer upper.Close()
	for _, c := range []struct {
		name  string
		upper *Writable
	}{{"lower-only", nil}, {"with-empty-upper", upper}} {
		b.Run(c.name, func(b *testing.B) {
			s, err := NewStack(lower, c.upper)
			if err != nil {
				b.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(2, 2))
			const batch = 64
			offsets := make([]int64, batch)
			p := make([]byte, 4096)
			reader := func(r interface {
				ReadAt([]byte, int64) (int, error)
			}) func() {
				i := 0
				return func() {
					if _, err := r.ReadAt(p, offsets[i%batch]); err != nil {
						b.Fatal(err)
					}
					i++
				}
			}
			prepare := func() {
				for i := range offsets {
					offsets[i] = int64(rng.IntN(int(s.Size()/4096))) * 4096
				}
			}
			compareABBA(b, batch, 8192, prepare, reader(s), reader(single), "x-vs-1layer")
		})
	}
}

// BenchmarkWritableRandomWrite compares random 4 KiB writes to a log-mode
// writable layer (subject: data append plus index record) with pwrite to a
// plain file at the same offsets (baseline), no fsync either way.
func BenchmarkWritableRandomWrite(b *testing.B) {
	const vsize = 256 << 20
	dir := b.TempDir()
	w, err := Create(filepath.Join(dir, "rw"), CreateOptions{VirtualSize: vsize})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	plain, err := os.Create(filepath.Join(dir, "plain"))
	if err != nil {
		b.Fatal(err)
	}
	defer plain.Close()
	if err := plain.Truncate(vsize); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 3))
	p := make([]byte, 4096)
	next := func() int64 { return int64(rng.IntN(vsize/4096)) * 4096 }
	write := func(wa interface {
		WriteAt([]byte, int64) (int, error)
	}) func() {
		return func() {
			if _, err := wa.WriteAt(p, next()); err != nil {
				b.Fatal(err)
			}
		}
	}
	compareABBA(b, 64, 4096, func() {}, write(w), write(plain), "x-vs-pwrite")
}
