package bdd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/obdproject/obd/ext4meta"
	"github.com/obdproject/obd/internal/facility"
)

// gate is a device whose reads block until it is opened, counting the reads in flight.
type gate struct {
	mu      sync.Mutex
	cond    *sync.Cond
	open    bool
	waiting int
}

func newGate() *gate { g := &gate{}; g.cond = sync.NewCond(&g.mu); return g }

func (g *gate) ReadAt(p []byte, _ int64) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.waiting++
	g.cond.Broadcast()
	for !g.open {
		g.cond.Wait()
	}
	g.waiting--
	return len(p), nil
}

// waitFor blocks until n reads are in flight.
func (g *gate) waitFor(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.waiting < n {
		g.cond.Wait()
	}
}

func (g *gate) release() {
	g.mu.Lock()
	g.open = true
	g.cond.Broadcast()
	g.mu.Unlock()
}

// ext4Of makes an image of size bytes holding an ext4 (mkfs.ext4 with args) with files of
// the given sizes, named f0, f1, ... (skipping when mkfs.ext4 is missing).
func ext4Of(t testing.TB, size int64, sizes []int, args ...string) []byte {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		facility.Missing(t, "mkfs.ext4 not installed (apt-get install e2fsprogs)")
	}
	src := t.TempDir()
	for i, n := range sizes {
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("f%d", i)), bytes.Repeat([]byte{1}, n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	mkfs := append([]string{"env", "MKE2FS_CONFIG=/dev/null", "mkfs.ext4", "-q", "-F"}, args...)
	mkfs = append(mkfs, "-d", src, img)
	if out, err := exec.Command(mkfs[0], mkfs[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v: %s", mkfs, err, out)
	}
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// fileOf walks an ext4 holding one regular file of size bytes and returns its Files.
func fileOf(t *testing.T, size int) *ext4meta.Files {
	t.Helper()
	img := ext4Of(t, int64(size)+16<<20, []int{size}, "-b", "4096", "-O", "extent")
	_, files, err := ext4meta.Walk(context.Background(), bytes.NewReader(img), ext4meta.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if files.Len() != 1 || len(files.Extents(0)) == 0 {
		t.Fatalf("walk found %d files, want 1 with data", files.Len())
	}
	return files
}

// TestFilePrefetchUsesFixedWorkers: fetching a file of 32 pieces keeps filePieceReads reads
// in flight on as many goroutines, not a goroutine per piece.
func TestFilePrefetchUsesFixedWorkers(t *testing.T) {
	files := fileOf(t, 32*filePieceSize)
	dev := newGate()
	p := &prefetcher{maxFile: 1 << 30, quiet: dev, fetched: map[int]bool{}, work: make(chan struct{}, 1),
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), replays: newReplays()}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	defer p.stop()
	defer dev.release()
	p.fetchFile(files, 0, 0)
	dev.waitFor(filePieceReads)
	if n := prefetchGoroutines(); n > filePieceReads {
		t.Errorf("a file of 32 pieces started %d goroutines, want at most %d", n, filePieceReads)
	}
}

// prefetchGoroutines counts the goroutines running the prefetcher's code, whatever the
// other tests of the package left running.
func prefetchGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "bdd.(*prefetcher).") && !strings.Contains(g, "TestFilePrefetchUsesFixedWorkers") {
			count++
		}
	}
	return count
}

// TestPrefetchPanicIsLogged: a panic while fetching a file ahead (the read path parses the
// image's bytes) is logged under err and ends that piece alone.
func TestPrefetchPanicIsLogged(t *testing.T) {
	files := fileOf(t, 2*filePieceSize)
	logs := make(records, 16)
	p := &prefetcher{maxFile: 1 << 30, quiet: panicky{}, fetched: map[int]bool{}, work: make(chan struct{}, 1),
		log: slog.New(logs), replays: newReplays()}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	defer p.stop()
	p.fetchFile(files, 0, 0)
	if msg, err := logs.next(); msg != "file prefetch failed" || !strings.Contains(err, "injected") {
		t.Fatalf("logged %q with err %q, want the prefetch failure with the panic", msg, err)
	}
}

type panicky struct{}

func (panicky) ReadAt([]byte, int64) (int, error) { panic("injected") }

// records is a slog.Handler that hands a test each record's message and err attribute.
type records chan slog.Record

func (records) Enabled(context.Context, slog.Level) bool { return true }
func (r records) Handle(_ context.Context, rec slog.Record) error {
	select {
	case r <- rec.Clone():
	default: // a test reads the first few
	}
	return nil
}
func (r records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r records) WithGroup(string) slog.Handler      { return r }

// next waits for a record with an err attribute and returns its message and err.
func (r records) next() (msg, err string) {
	for rec := range r {
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == "err" {
				msg, err = rec.Message, a.Value.String()
			}
			return err == ""
		})
		if err != "" {
			return msg, err
		}
	}
	return "", ""
}
