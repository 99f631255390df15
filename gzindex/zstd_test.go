package gzindex

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// zst compresses each chunk of data as a frame of its own (a seekable zstd
// blob), with a skippable frame after the first.
func zst(t testing.TB, data []byte, chunk int) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderCRC(true))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	var blob []byte
	for off := 0; off < len(data); off += chunk {
		blob = enc.EncodeAll(data[off:min(off+chunk, len(data))], blob)
		if off == 0 {
			skip := binary.LittleEndian.AppendUint32(nil, zstdSkippableMagic+3)
			skip = binary.LittleEndian.AppendUint32(skip, 5)
			blob = append(blob, append(skip, "hello"...)...)
		}
	}
	return blob
}

func TestZstdRoundTrip(t *testing.T) {
	data := sample(11, 3<<20)
	blob := zst(t, data, 100<<10)
	var stream bytes.Buffer
	x, err := Build(bytes.NewReader(blob), BuildOptions{Kind: KindZstd, Spacing: MinSpacing}, &stream)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stream.Bytes(), data) || x.Size != int64(len(data)) || len(x.Spans) < 20 {
		t.Fatalf("stream of %d bytes in %d spans, want the %d input bytes in many", x.Size, len(x.Spans), len(data))
	}
	y, err := Decode(x.Encode())
	if err != nil {
		t.Fatal(err)
	}
	c := &countingReaderAt{t: t, r: bytes.NewReader(blob)}
	r := NewReader(c, y, ReaderOptions{})
	got := make([]byte, 5000)
	at := y.Spans[7].Out + 1234
	if _, err := r.ReadAt(got, at); err != nil || !bytes.Equal(got, data[at:at+5000]) {
		t.Fatalf("read at %d: %v", at, err)
	}
	if c.bytes > int64(len(blob))/8 {
		t.Fatalf("a 5000-byte read fetched %d of the blob's %d bytes", c.bytes, len(blob))
	}
	all := make([]byte, len(data))
	if _, err := r.ReadAt(all, 0); err != nil || !bytes.Equal(all, data) {
		t.Fatalf("whole read: %v", err)
	}
	// Bytes that are not the blob's are refused.
	bad := bytes.Clone(blob)
	bad[len(bad)/2] ^= 1
	r = NewReader(bytes.NewReader(bad), y, ReaderOptions{})
	if _, err := r.ReadAt(all, 0); !errors.Is(err, ErrMismatch) {
		t.Fatalf("tampered blob: %v, want ErrMismatch", err)
	}
	// So are streams that are not zstd frames.
	for name, b := range map[string][]byte{"gzip": gz(t, 6, data[:1000]), "cut": blob[:len(blob)-3], "empty": nil} {
		if _, err := Build(bytes.NewReader(b), BuildOptions{Kind: KindZstd}, nil); err == nil {
			t.Errorf("%s: Build accepted it", name)
		}
	}
}

// FuzzBuildZstd: any input gives an error or the stream klauspost/compress
// decodes, never a panic; reads through an accepted index give the stream.
func FuzzBuildZstd(f *testing.F) {
	f.Add(zst(f, sample(12, 200<<10), 70<<10))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x01, 0x00, 0x00})
	dec, err := zstd.NewReader(nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, blob []byte) {
		var got bytes.Buffer
		x, err := Build(bytes.NewReader(blob), BuildOptions{Kind: KindZstd, Spacing: MinSpacing}, &got)
		if err != nil {
			return
		}
		want, werr := dec.DecodeAll(blob, nil)
		if werr != nil {
			t.Fatalf("Build accepts what klauspost/compress refuses: %v", werr)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Fatal("Build's stream differs from klauspost/compress's")
		}
		all := make([]byte, x.Size)
		if _, err := NewReader(bytes.NewReader(blob), x, ReaderOptions{}).ReadAt(all, 0); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !bytes.Equal(all, want) {
			t.Fatal("reader's stream differs")
		}
	})
}
