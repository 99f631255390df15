package lsmt

import (
	"fmt"
	"io"
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

// BenchmarkStackRandomRead compares random 4 KiB reads through a 10-layer
// stack with reads of the same data from one merged layer (all plain files
// in the page cache), measured alternately in the same run. x-vs-1layer is
// the stack's throughput as a fraction of the single layer's.
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
			// Each op reads 1024 random blocks through both, in batches of 64
			// in ABBA order so drift and cache warmth hit both sides alike.
			const batch, perOp = 64, 1024
			rng := rand.New(rand.NewPCG(2, 2))
			offsets := make([]int64, batch)
			p := make([]byte, 4096)
			timeReads := func(r io.ReaderAt) time.Duration {
				start := time.Now()
				for _, off := range offsets {
					if _, err := r.ReadAt(p, off); err != nil {
						b.Fatal(err)
					}
				}
				return time.Since(start)
			}
			var stackTime, singleTime time.Duration
			var ratios []float64 // per ABBA pair: single time / stack time
			b.ResetTimer()
			for range b.N {
				for k := range perOp / batch {
					for i := range offsets {
						offsets[i] = int64(rng.IntN(int(s.Size()/4096))) * 4096
					}
					var st, sg time.Duration
					if k%2 == 0 {
						st = timeReads(s)
						sg = timeReads(single)
					} else {
						sg = timeReads(single)
						st = timeReads(s)
					}
					stackTime += st
					singleTime += sg
					ratios = append(ratios, float64(sg)/float64(st))
				}
			}
			reads := float64(b.N * perOp)
			b.ReportMetric(float64(stackTime.Nanoseconds())/reads, "ns/read-stack")
			b.ReportMetric(float64(singleTime.Nanoseconds())/reads, "ns/read-1layer")
			// The median pair ratio shrugs off bursts of load from other processes.
			slices.Sort(ratios)
			b.ReportMetric(ratios[len(ratios)/2], "x-vs-1layer")
		})
	}
}
