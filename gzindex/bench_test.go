package gzindex

import (
	"bytes"
	"compress/gzip"
	"io"
	"testing"
)

func BenchmarkBuild(b *testing.B) {
	data := sample(9, 16<<20)
	blob := gz(b, 6, data)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Build(bytes.NewReader(blob), BuildOptions{Kind: KindGzip}, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkStdlibGunzip(b *testing.B) {
	data := sample(9, 16<<20)
	blob := gz(b, 6, data)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		zr, _ := gzip.NewReader(bytes.NewReader(blob))
		io.Copy(io.Discard, zr)
	}
}
