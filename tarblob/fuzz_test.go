package tarblob

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzOpen feeds arbitrary bytes to the header parser: it must never panic or hang, and a
// member it returns must lie inside the blob.
func FuzzOpen(f *testing.F) {
	f.Add(paxTar(10, "size", "10"))
	f.Add(newHeader(MemberName, typeRegular, 0o644, 0))
	f.Fuzz(func(t *testing.T, blob []byte) {
		sec, err := Open(bytes.NewReader(blob), int64(len(blob)))
		if err != nil {
			if !errors.Is(err, ErrNotLayerTar) {
				t.Fatalf("error %v does not wrap ErrNotLayerTar", err)
			}
			return
		}
		_, off, n := sec.Outer()
		if off+n > int64(len(blob)) || off%blockSize != 0 {
			t.Fatalf("member [%d, %d) outside a %d-byte blob", off, off+n, len(blob))
		}
		if _, err := io.Copy(io.Discard, sec); err != nil {
			t.Fatalf("reading the member: %v", err)
		}
	})
}
