package bdd_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pierrec/lz4/v4"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/zfile"
)

// textImage writes an image of size bytes of compressible, text-like data (every
// chunk filled, so reads never hit holes).
func textImage(b *testing.B, size int) string {
	b.Helper()
	rng := rand.New(rand.NewPCG(3, 4))
	words := strings.Fields("the quick brown fox jumps over lazy dog layer block device image container registry cache")
	data := make([]byte, 0, size+64)
	for len(data) < size {
		data = append(data, words[rng.IntN(len(words))]...)
		if rng.IntN(12) == 0 {
			data = strconv.AppendUint(append(data, '\n'), rng.Uint64(), 16)
		}
		data = append(data, ' ')
	}
	p := filepath.Join(b.TempDir(), "text.img")
	if err := os.WriteFile(p, data[:size], 0o644); err != nil {
		b.Fatal(err)
	}
	return p
}

// rawLZ4DecodeRate compresses the image in 4 KiB blocks (ZFile's default) and
// returns how fast one goroutine decodes them all, in bytes/s: the ceiling a ZFile
// read path can reach on this machine.
func rawLZ4DecodeRate(b *testing.B, img string) float64 {
	data, err := os.ReadFile(img)
	if err != nil {
		b.Fatal(err)
	}
	const bs = 4096
	var blocks [][]byte
	var c lz4.Compressor
	for off := 0; off < len(data); off += bs {
		dst := make([]byte, lz4.CompressBlockBound(bs))
		n, err := c.CompressBlock(data[off:min(off+bs, len(data))], dst)
		if err != nil || n == 0 {
			b.Fatalf("lz4 compress: %v", err)
		}
		blocks = append(blocks, dst[:n])
	}
	out := make([]byte, bs)
	best := 0.0
	for range 3 {
		start := time.Now()
		for _, blk := range blocks {
			if _, err := lz4.UncompressBlock(blk, out); err != nil {
				b.Fatal(err)
			}
		}
		best = max(best, float64(len(data))/time.Since(start).Seconds())
	}
	return best
}

// fioReadRate runs fio sequential 1 MiB direct reads over dev and returns bytes/s.
func fioReadRate(b *testing.B, dev string, size int64, jobs int) float64 {
	b.Helper()
	out, err := exec.Command("fio", "--name=seq", "--filename="+dev, "--rw=read", "--bs=1M", "--direct=1",
		"--ioengine=libaio", "--iodepth=8", "--numjobs="+strconv.Itoa(jobs), "--offset_increment="+strconv.FormatInt(size/int64(jobs), 10),
		"--size="+strconv.FormatInt(size/int64(jobs), 10), "--group_reporting", "--output-format=json").Output()
	if err != nil {
		b.Fatalf("fio: %v\n%s", err, out)
	}
	var res struct {
		Jobs []struct {
			Read struct {
				BwBytes float64 `json:"bw_bytes"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) == 0 {
		b.Fatalf("fio output: %v\n%s", err, out)
	}
	return res.Jobs[0].Read.BwBytes
}

func requireFio(b *testing.B) {
	if _, err := exec.LookPath("fio"); err != nil {
		b.Skip("fio is not installed (apt-get install fio)")
	}
}

// BenchmarkColdSeqReadLZ4 reads a freshly attached device backed by one local lz4
// ZFile layer with fio (1 MiB sequential direct reads) and reports its rate as a
// ratio of raw single-threaded lz4 decoding of the same data. The two are measured
// alternately, three times each, and the median ratio is reported, so that load from
// elsewhere on the machine hits both sides alike. Target: ≥ 0.6.
func BenchmarkColdSeqReadLZ4(b *testing.B) {
	requireBlockFacilities(b)
	requireFio(b)
	const size = 512 << 20
	img := textImage(b, size)
	layers := splitImage(b, img, 1, &zfile.Options{Algorithm: zfile.LZ4}, false)
	d := startDaemon(b, "")
	var ratios, rates, decodes []float64
	for i := 0; i < b.N; i++ {
		for range 3 {
			decode := rawLZ4DecodeRate(b, img)
			// A new device each time: nothing of it is cached in bdd or the loop device.
			dev := d.attach(&bddv1.AttachRequest{Layers: pathLayers(layers...), ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE})
			rate := fioReadRate(b, dev.GetDevicePath(), size, 1)
			if _, err := d.Client.Detach(d.ctx(), &bddv1.DetachRequest{Id: dev.GetId()}); err != nil {
				b.Fatal(err)
			}
			ratios, rates, decodes = append(ratios, rate/decode), append(rates, rate), append(decodes, decode)
		}
	}
	b.ReportMetric(median(rates)/1e6, "device-MB/s")
	b.ReportMetric(median(decodes)/1e6, "lz4decode-MB/s")
	b.ReportMetric(median(ratios), "ratio-vs-lz4decode")
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkRSS10Devices attaches the same 1 GiB, 10-layer lz4 image 10 times,
// reads every device once with fio, and reports bdd's resident memory (VmRSS) right
// after the reads and after 5 s idle, as ratios of the 64 MiB budget (target ≤ 1):
// with the default memory_limit, and with the limit off (Go's plain collector
// pacing) for comparison.
func BenchmarkRSS10Devices(b *testing.B) {
	requireBlockFacilities(b)
	requireFio(b)
	const size = 1 << 30
	img := textImage(b, size)
	layers := splitImage(b, img, 10, &zfile.Options{Algorithm: zfile.LZ4}, false)
	os.Remove(img)
	for _, tc := range []struct{ name, config string }{
		{"default", ""},
		{"nolimit", `memory_limit = "0"`},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				d := startDaemon(b, tc.config)
				start := time.Now()
				for range 10 {
					dev := d.attach(&bddv1.AttachRequest{Layers: pathLayers(layers...), ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE})
					fioReadRate(b, dev.GetDevicePath(), size, 2)
				}
				readRate := 10 * float64(size) / time.Since(start).Seconds()
				busy := vmRSS(b, d.Pid())
				// The same devices, attached but idle for a few seconds.
				time.Sleep(5 * time.Second)
				idle := vmRSS(b, d.Pid())
				b.ReportMetric(float64(busy)/(1<<20), "RSS-after-reads-MiB")
				b.ReportMetric(float64(idle)/(1<<20), "RSS-idle-MiB")
				b.ReportMetric(float64(busy)/(64<<20), "ratio-after-reads-vs-64MiB")
				b.ReportMetric(float64(idle)/(64<<20), "ratio-idle-vs-64MiB")
				b.ReportMetric(readRate/1e6, "read-MB/s")
				d.Stop(b)
			}
		})
	}
}

// vmRSS reads the resident set size of pid from /proc, in bytes.
func vmRSS(b *testing.B, pid int) int64 {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatal("no VmRSS in /proc status")
	return 0
}
