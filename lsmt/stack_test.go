package lsmt

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"pgregory.net/rapid"
)

// commitToFile commits l into path and opens the result.
func commitToFile(t testing.TB, l Layer, path string, opts CommitOptions) *File {
	t.Helper()
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Commit(l, out, opts); err != nil {
		t.Fatal(err)
	}
	return openFile(t, out)
}

// openFile opens the committed layer in f (closing f at test end).
func openFile(t testing.TB, f *os.File) *File {
	t.Helper()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	l, err := Open(f, st.Size(), WithName(f.Name()))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// stackModel drives a Stack and a flat []byte disk with the same operations.
type stackModel struct {
	t      *rapid.T
	root   string
	disk   []byte
	lower  []Layer
	upper  *Writable
	stack  *Stack
	files  []*os.File
	layers int
}

const modelVSize = 1 << 20

func (m *stackModel) newUpper() {
	dir := filepath.Join(m.root, fmt.Sprintf("rw%d", m.layers))
	m.layers++
	w, err := Create(dir, CreateOptions{VirtualSize: modelVSize})
	if err != nil {
		m.t.Fatal(err)
	}
	m.setUpper(w)
}

func (m *stackModel) setUpper(w *Writable) {
	m.upper = w
	s, err := NewStack(m.lower, w)
	if err != nil {
		m.t.Fatal(err)
	}
	m.stack = s
}

// span draws a sector-aligned range inside the disk.
func span(t *rapid.T) (int64, int64) {
	sectors := int64(modelVSize / SectorSize)
	start := rapid.Int64Range(0, sectors-1).Draw(t, "sector")
	n := rapid.Int64Range(1, min(sectors-start, 160)).Draw(t, "sectors")
	return start * SectorSize, n * SectorSize
}

func (m *stackModel) write(t *rapid.T) {
	off, n := span(t)
	p := make([]byte, n)
	if seed := rapid.Uint8().Draw(t, "pattern"); seed != 0 { // 0: an all-zero write, still data
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(off)))
		for i := range p {
			p[i] = byte(rng.UintN(255) + 1)
		}
	}
	if _, err := m.stack.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
	copy(m.disk[off:], p)
}

func (m *stackModel) discard(t *rapid.T) {
	off, n := span(t)
	if err := m.stack.Discard(off, n); err != nil {
		t.Fatal(err)
	}
	clear(m.disk[off : off+n])
}

// commit commits the upper (or seals it), pushes the result as a new lower
// layer and starts a new upper.
func (m *stackModel) commit(t *rapid.T) {
	if len(m.lower) >= 8 {
		t.Skip("enough layers")
	}
	var l *File
	if rapid.Bool().Draw(t, "seal") {
		if err := m.upper.Seal(); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(filepath.Join(m.upper.dir, DataFileName))
		if err != nil {
			t.Fatal(err)
		}
		m.files = append(m.files, f)
		st, _ := f.Stat()
		if l, err = Open(f, st.Size()); err != nil {
			t.Fatal(err)
		}
	} else {
		f, err := os.Create(filepath.Join(m.root, fmt.Sprintf("layer%d.lsmt", m.layers)))
		if err != nil {
			t.Fatal(err)
		}
		m.files = append(m.files, f)
		if _, err := m.upper.Commit(f, CommitOptions{}); err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		if l, err = Open(f, st.Size()); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.upper.Close(); err != nil {
		t.Fatal(err)
	}
	m.lower = append(m.lower, l)
	m.newUpper()
}

// reopen closes the upper and reopens it from its files (replaying the log).
func (m *stackModel) reopen(t *rapid.T) {
	dir := m.upper.dir
	if err := m.upper.Close(); err != nil {
		t.Fatal(err)
	}
	w, err := OpenWritable(dir)
	if err != nil {
		t.Fatal(err)
	}
	m.setUpper(w)
}

func (m *stackModel) check(t *rapid.T) {
	for range 3 {
		off := rapid.Int64Range(0, modelVSize-1).Draw(t, "read offset")
		n := rapid.Int64Range(1, min(modelVSize-off, 100000)).Draw(t, "read length")
		got := make([]byte, n)
		if _, err := m.stack.ReadAt(got, off); err != nil {
			t.Fatalf("ReadAt(%d, %d): %v", off, n, err)
		}
		if i := firstDiff(got, m.disk[off:off+n]); i < len(got) {
			t.Fatalf("ReadAt(%d, %d): byte %d is %#x, model has %#x", off, n, off+int64(i), got[i], m.disk[off+int64(i)])
		}
	}
}

func (m *stackModel) close() {
	m.upper.Close()
	for _, f := range m.files {
		f.Close()
	}
}

func TestStackAgainstModel(t *testing.T) {
	root := t.TempDir()
	iteration := 0
	rapid.Check(t, func(t *rapid.T) {
		dir := filepath.Join(root, fmt.Sprint(iteration))
		iteration++
		m := &stackModel{t: t, root: dir, disk: make([]byte, modelVSize)}
		m.newUpper()
		defer m.close()
		t.Repeat(map[string]func(*rapid.T){
			"write":   m.write,
			"discard": m.discard,
			"commit":  m.commit,
			"reopen":  m.reopen,
			"":        m.check,
		})
		// The whole disk, and Merge of every layer, equal the model.
		whole := make([]byte, modelVSize)
		if _, err := m.stack.ReadAt(whole, 0); err != nil || !bytes.Equal(whole, m.disk) {
			t.Fatalf("whole-disk read differs from the model (err %v)", err)
		}
		var merged bytes.Buffer
		if _, err := Merge(append(m.lower[:len(m.lower):len(m.lower)], m.upper), &merged, CommitOptions{}); err != nil {
			t.Fatal(err)
		}
		f, err := Open(bytes.NewReader(merged.Bytes()), int64(merged.Len()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.ReadAt(whole, 0); err != nil || !bytes.Equal(whole, m.disk) {
			t.Fatalf("merged layer differs from the model (err %v)", err)
		}
		checkSegmentsCover(t, m.stack.Segments(), m.disk)
	})
}

// checkSegmentsCover checks the stack's merged index: sorted, non-overlapping,
// and every non-zero byte of the model lies in a data segment.
func checkSegmentsCover(t *rapid.T, segs []Segment, disk []byte) {
	var pos uint64
	for i, s := range segs {
		if s.Length == 0 || (i > 0 && s.Offset < segs[i-1].End()) {
			t.Fatalf("merged segment %d %+v empty or overlapping", i, s)
		}
		for sec := pos; sec < s.Offset; sec++ {
			if !isZero(disk[sec*SectorSize : (sec+1)*SectorSize]) {
				t.Fatalf("sector %d holds data but no segment covers it", sec)
			}
		}
		pos = s.End()
	}
}

func isZero(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// buildLayers makes n committed layers in memory: layer i holds sector 0 and
// sector i+1, both filled with byte i+1.
func buildLayers(t *testing.T, n int) []Layer {
	t.Helper()
	root := t.TempDir()
	layers := make([]Layer, n)
	for i := range n {
		w, err := Create(filepath.Join(root, fmt.Sprint(i)), CreateOptions{VirtualSize: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		sector := bytes.Repeat([]byte{byte(i + 1)}, SectorSize)
		for _, off := range []int64{0, int64(i+1) * SectorSize} {
			if _, err := w.WriteAt(sector, off); err != nil {
				t.Fatal(err)
			}
		}
		var buf bytes.Buffer
		if _, err := w.Commit(&buf, CommitOptions{}); err != nil {
			t.Fatal(err)
		}
		w.Close()
		if layers[i], err = Open(bytes.NewReader(buf.Bytes()), int64(buf.Len())); err != nil {
			t.Fatal(err)
		}
	}
	return layers
}

func TestStackLayerLimit(t *testing.T) {
	layers := buildLayers(t, MaxLayers+1)
	if _, err := NewStack(layers, nil); !errors.Is(err, ErrTooManyLayers) {
		t.Fatalf("256 layers: %v, want ErrTooManyLayers", err)
	}
	if _, err := Merge(layers, &bytes.Buffer{}, CommitOptions{}); !errors.Is(err, ErrTooManyLayers) {
		t.Fatalf("merge of 256 layers: %v, want ErrTooManyLayers", err)
	}
	layers = layers[:MaxLayers]
	s, err := NewStack(layers, nil)
	if err != nil {
		t.Fatal(err)
	}
	var merged bytes.Buffer
	if _, err := Merge(layers, &merged, CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	m, err := Open(bytes.NewReader(merged.Bytes()), int64(merged.Len()))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []Layer{m, layerOf{s}} {
		got := make([]byte, (MaxLayers+1)*SectorSize)
		if _, err := r.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		for sec := 0; sec <= MaxLayers; sec++ {
			want := byte(sec) // layer sec-1 wrote byte sec at sector sec
			if sec == 0 {
				want = MaxLayers // the top layer wins sector 0
			}
			if g := got[sec*SectorSize]; g != want {
				t.Fatalf("%T: sector %d reads %d, want %d", r, sec, g, want)
			}
		}
	}
	if _, err := s.WriteAt(make([]byte, SectorSize), 0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("write to a stack without upper: %v", err)
	}
	if err := s.Discard(0, SectorSize); !errors.Is(err, ErrReadOnly) {
		t.Errorf("discard on a stack without upper: %v", err)
	}
	if segs := s.Segments(); segs[0].Tag != MaxLayers-1 || segs[len(segs)-1].Tag != MaxLayers-1 {
		t.Errorf("merged tags: first %+v last %+v", segs[0], segs[len(segs)-1])
	}
}

// stackWithNewUpper stacks a new 1 MiB writable layer on lower; the stack
// is closed at test end.
func stackWithNewUpper(t *testing.T, lower []Layer, sparse bool) (*Stack, *Writable) {
	t.Helper()
	w, err := Create(t.TempDir(), CreateOptions{VirtualSize: 1 << 20, Sparse: sparse})
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewStack(lower, w)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, w
}

// layerOf lets a Stack stand where the test loops over Layers; only ReadAt is used.
type layerOf struct{ *Stack }

func (layerOf) ReadData([]byte, int64) (int, error) { return 0, errors.New("unused") }

// TestStackConcurrent runs readers against writers and discards on one stack
// (run with -race); afterwards every block holds one writer's full pattern.
func TestStackConcurrent(t *testing.T) {
	s, _ := stackWithNewUpper(t, buildLayers(t, 3), false)
	const block = 4096
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			buf := make([]byte, block)
			for range 300 {
				off := int64(rng.IntN(64)) * block
				switch rng.IntN(3) {
				case 0:
					for i := range buf {
						buf[i] = byte(g + 1)
					}
					if _, err := s.WriteAt(buf, off); err != nil {
						errs <- err
						return
					}
				case 1:
					if err := s.Discard(off, block); err != nil {
						errs <- err
						return
					}
				default:
					if _, err := s.ReadAt(buf, off); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	buf := make([]byte, block)
	for b := range 64 {
		if _, err := s.ReadAt(buf, int64(b)*block); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, bytes.Repeat(buf[:1], block)) {
			t.Fatalf("block %d is torn: starts %x", b, buf[:8])
		}
	}
}
