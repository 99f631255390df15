package gzindex

import (
	"bytes"
	"compress/gzip"
	"io"
	"testing"
)

// FuzzBuild checks the inflater against compress/gzip: valid streams give the
// same bytes through Build and through every span of the index, and any input
// gives an error or the same result, never a panic.
func FuzzBuild(f *testing.F) {
	f.Add(gz(f, 6, sample(1, 140<<10)))
	f.Add(gz(f, 1, []byte("hello")))
	f.Add(gz(f, 0, sample(2, 5<<10)))
	f.Add(gz(f, -2, sample(3, 3<<10), []byte("second member")))
	f.Add([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 3, 0})
	f.Fuzz(func(t *testing.T, blob []byte) {
		var got bytes.Buffer
		x, err := Build(bytes.NewReader(blob), BuildOptions{Kind: KindGzip, Spacing: MinSpacing}, &got)
		zr, zerr := gzip.NewReader(bytes.NewReader(blob))
		var want []byte
		if zerr == nil {
			want, zerr = io.ReadAll(zr)
		}
		if err != nil {
			if zerr == nil && len(blob) > 0 {
				t.Logf("compress/gzip accepts what Build refuses: %v", err)
			}
			return
		}
		if zerr != nil {
			t.Fatalf("Build accepts what compress/gzip refuses: %v", zerr)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Fatal("Build's stream differs from compress/gzip's")
		}
		r := NewReader(bytes.NewReader(blob), x, ReaderOptions{})
		all := make([]byte, x.Size)
		if _, err := r.ReadAt(all, 0); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !bytes.Equal(all, want) {
			t.Fatal("reader's stream differs")
		}
	})
}

// FuzzDecode feeds arbitrary index bytes to Decode and reads through what it
// accepts: errors are fine, panics and hangs are not.
func FuzzDecode(f *testing.F) {
	blob := gz(f, 6, sample(4, 300<<10))
	x, err := Build(bytes.NewReader(blob), BuildOptions{Kind: KindGzip, Spacing: MinSpacing}, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(x.Encode())
	raw, _ := Build(bytes.NewReader(blob), BuildOptions{Kind: KindRaw, Spacing: MinSpacing}, nil)
	f.Add(raw.Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		y, err := Decode(b)
		if err != nil {
			return
		}
		if !bytes.Equal(y.Encode(), b) {
			t.Fatal("accepted index does not re-encode to its bytes")
		}
		if y.BlobSize > int64(len(blob))*4 || y.Size > 64<<20 {
			return
		}
		src := append(blob, make([]byte, max(0, y.BlobSize-int64(len(blob))))...)
		r := NewReader(bytes.NewReader(src[:y.BlobSize]), y, ReaderOptions{})
		for _, s := range y.Spans {
			r.ReadAt(make([]byte, 64), s.Out)
		}
	})
}
