package lsmt

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestImportLeavesZeroBlocksAsHoles: the non-zero blocks of an image land at the offset, the
// zero ones stay unwritten (the lower layer shows through) and a short tail is padded.
func TestImportLeavesZeroBlocksAsHoles(t *testing.T) {
	w, err := Create(filepath.Join(t.TempDir(), "upper"), CreateOptions{VirtualSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	image := make([]byte, 3*ImportZeroBlock+100) // data, zeros, data, a 100-byte tail
	copy(image, bytes.Repeat([]byte{1}, ImportZeroBlock))
	copy(image[2*ImportZeroBlock:], bytes.Repeat([]byte{2}, ImportZeroBlock+100))
	const off = 8 * SectorSize
	stored, err := w.Import(bytes.NewReader(image), off)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(2*ImportZeroBlock + SectorSize); stored != want {
		t.Errorf("stored %d bytes, want %d", stored, want)
	}
	var written int64
	for _, s := range w.Segments() {
		written += int64(s.Length) * SectorSize
	}
	if written != stored {
		t.Errorf("segments cover %d bytes, want the %d stored", written, stored)
	}
	got := make([]byte, len(image))
	if _, err := w.ReadAt(got, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, image) {
		t.Error("the layer does not read back the image")
	}
}

func TestImportRefusesBadPlacement(t *testing.T) {
	w, err := Create(filepath.Join(t.TempDir(), "upper"), CreateOptions{VirtualSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	data := bytes.Repeat([]byte{7}, 8<<10)
	if _, err := w.Import(bytes.NewReader(data), 100); err == nil || !strings.Contains(err.Error(), "not a multiple") {
		t.Errorf("unaligned offset: err = %v", err)
	}
	if _, err := w.Import(bytes.NewReader(data), 60<<10); err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Errorf("image past the end: err = %v", err)
	}
	if len(w.Segments()) != 0 {
		t.Errorf("refused imports wrote %d segments", len(w.Segments()))
	}
}
