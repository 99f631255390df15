package dedup

import (
	"archive/tar"
	"bytes"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
)

// randomBytes are n bytes that differ by seed.
func randomBytes(seed uint64, n int) []byte {
	var key [32]byte
	key[0] = byte(seed)
	b := make([]byte, n)
	rand.NewChaCha8(key).Read(b)
	return b
}

func tarOf(t *testing.T, files map[string][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range []string{"a", "b", "c", "d"} {
		data, ok := files[name]
		if !ok {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	if err := tw.WriteHeader(&tar.Header{Name: "dir/", Mode: 0o755, Typeflag: tar.TypeDir}); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	return buf.Bytes()
}

// TestLevels: two layers sharing one file whole and one 4 KiB block of another, the first
// layer referenced by two images.
func TestLevels(t *testing.T) {
	f1, f2 := randomBytes(1, 8192), randomBytes(2, 4096)
	f3 := append(append([]byte(nil), f2...), randomBytes(3, 100)...)
	layerA := tarOf(t, map[string][]byte{"a": f1, "b": f2})
	layerB := tarOf(t, map[string][]byte{"c": f1, "d": f3})
	m := NewMeasurer()
	m.Image("one")
	if err := m.AddTar("sha256:a", 100, bytes.NewReader(layerA)); err != nil {
		t.Fatal(err)
	}
	m.Image("two")
	if !m.Seen("sha256:a") {
		t.Fatal("a measured layer is not seen")
	}
	m.AddSeen("sha256:a")
	if err := m.AddTar("sha256:b", 50, bytes.NewReader(layerB)); err != nil {
		t.Fatal(err)
	}
	r := m.Report().OCI
	a, b := int64(8192+4096), int64(8192+4196)
	want := Kind{Layers: 3, DistinctLayers: 2,
		Stored:     Level{Total: 250, Unique: 150},
		Layer:      Level{Total: 2*a + b, Unique: a + b},
		File:       Level{Total: 2*a + b, Unique: a + 4196},
		Block:      Level{Total: 2*a + b, Unique: a + 100},
		ZFileBlock: Level{}}
	if r != want {
		t.Fatalf("report\n%+v, want\n%+v", r, want)
	}
	if md := m.Report().Markdown(); !strings.Contains(md, "| OCI: 3 (2 distinct)") || strings.Contains(md, "overlaybd") {
		t.Fatalf("markdown:\n%s", md)
	}
}

// TestOverlaybdLayer: an upstream-made ZFile layer counted twice is all duplicate at every
// level, and its blocks cover its written data.
func TestOverlaybdLayer(t *testing.T) {
	data, err := os.ReadFile("../testdata/reference/lsmt/A.commit.lz4-bs4k.zfile")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMeasurer()
	for _, d := range []string{"sha256:x", "sha256:y"} { // the same bytes under two digests
		if err := m.AddOverlaybd(d, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
	}
	r := m.Report().OBD
	if r.Block.Total == 0 || r.ZFileBlock.Total == 0 || r.Layer.Total != r.Block.Total {
		t.Fatalf("report %+v: want blocks of both kinds, layer content = its blocks", r)
	}
	for name, l := range map[string]Level{"block": r.Block, "zfile block": r.ZFileBlock} {
		if l.Unique*2 > l.Total {
			t.Errorf("%s level %+v: the second copy is not all duplicate", name, l)
		}
	}
	if r.Stored.Dup() != 0 {
		t.Errorf("distinct digests counted as one stored layer: %+v", r.Stored)
	}
	if err := m.AddOverlaybd("sha256:bad", bytes.NewReader(data[:100]), 100); err == nil {
		t.Fatal("a truncated layer was measured")
	}
}

// FuzzAddTar: any layer stream is measured or refused with an error, never a panic.
func FuzzAddTar(f *testing.F) {
	f.Add([]byte{})
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "a", Mode: 0o644, Size: 5, Typeflag: tar.TypeReg})
	tw.Write([]byte("hello"))
	tw.Close()
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		m := NewMeasurer()
		if err := m.AddTar("sha256:f", int64(len(data)), bytes.NewReader(data)); err != nil {
			return
		}
		r := m.Report().OCI
		if r.File.Total != r.Block.Total || r.File.Unique > r.File.Total {
			t.Fatalf("inconsistent report %+v", r)
		}
	})
}
