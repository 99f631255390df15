package lsmt_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/obdproject/obd/lsmt"
)

func TestMapped(t *testing.T) {
	data := make([]byte, 3*lsmt.SectorSize-100) // the last sector is partial
	for i := range data {
		data[i] = byte(i%251 + 1)
	}
	segs := []lsmt.Segment{
		{Offset: 2, Length: 2, MOffset: 1},
		{Offset: 4, Length: 1, Zeroed: true},
		{Offset: 8, Length: 1, MOffset: 0},
	}
	m, err := lsmt.NewMapped(segs, bytes.NewReader(data), int64(len(data)), 16*lsmt.SectorSize, "test")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 16*lsmt.SectorSize)
	if _, err := m.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, len(got))
	copy(want[2*512:4*512], data[512:])
	copy(want[8*512:9*512], data[:512])
	if !bytes.Equal(got, want) {
		t.Fatal("mapped layer reads wrong bytes")
	}
	// Under a stack, a mapped layer hides what is below its records only.
	below := make([]byte, len(want))
	for i := range below {
		below[i] = 0xee
	}
	st, err := lsmt.NewStack([]lsmt.Layer{memLayer(t, below), m}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	copy(want[:2*512], below)
	copy(want[5*512:8*512], below)
	copy(want[9*512:], below)
	if !bytes.Equal(got, want) {
		t.Fatal("stack over a mapped layer reads wrong bytes")
	}

	for name, bad := range map[string][]lsmt.Segment{
		"outside data": {{Offset: 0, Length: 2, MOffset: 2}},
		"overlap":      {{Offset: 0, Length: 2}, {Offset: 1, Length: 1}},
		"past disk":    {{Offset: 15, Length: 2, Zeroed: true}},
		"empty":        {{Offset: 0, Length: 0}},
	} {
		if _, err := lsmt.NewMapped(bad, bytes.NewReader(data), int64(len(data)), 16*lsmt.SectorSize, "test"); !errors.Is(err, lsmt.ErrFormat) {
			t.Errorf("%s: %v, want ErrFormat", name, err)
		}
	}
}

// memLayer is a layer holding b whole, as one committed file.
func memLayer(t *testing.T, b []byte) lsmt.Layer {
	t.Helper()
	w, err := lsmt.Create(t.TempDir(), lsmt.CreateOptions{VirtualSize: int64(len(b))})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := w.Commit(&out, lsmt.CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	f, err := lsmt.Open(bytes.NewReader(out.Bytes()), int64(out.Len()))
	if err != nil {
		t.Fatal(err)
	}
	return f
}
