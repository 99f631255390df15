package bdd

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/obdproject/obd/ext4meta"
)

// FuzzLoadConfig feeds arbitrary bytes as the config file: Load must return a
// configuration that validates, or an error, and never panic.
func FuzzLoadConfig(f *testing.F) {
	f.Add([]byte("state_dir = \"/s\"\n[cache]\nsize = \"1GiB\"\n"))
	path := filepath.Join(f.TempDir(), "bdd.toml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := DefaultConfig()
		if err := cfg.Load(path, nil); err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Load accepted a config that does not validate: %v", err)
		}
	})
}

// FuzzFilePrefetch walks arbitrary device bytes as the metadata prefetch does and queues
// every file the walk found as a read that misses the cache would: each file's pieces must
// be well formed and come to no more than its size (rounded up to a 64 KiB block), however
// the extents lie, and queuing must not panic.
func FuzzFilePrefetch(f *testing.F) {
	if _, err := exec.LookPath("mkfs.ext4"); err == nil {
		f.Add(ext4Of(f, 256<<10, []int{100, 5000, 100 << 10}, "-b", "1024", "-N", "64", "-O", "extent"))
	}
	f.Add(make([]byte, 4096))
	f.Fuzz(func(t *testing.T, dev []byte) {
		_, files, err := ext4meta.Walk(t.Context(), bytes.NewReader(dev), ext4meta.Options{MaxBytes: 1 << 20})
		if err != nil {
			return
		}
		// workers set: the pieces stay queued for the checks below.
		p := &prefetcher{maxFile: 64 << 20, fetched: map[int]bool{}, work: make(chan struct{}, 1), workers: true,
			log: slog.New(slog.DiscardHandler), replays: newReplays()}
		p.ctx, p.cancel = context.WithCancel(t.Context())
		defer p.cancel()
		for file := range files.Len() {
			before := len(p.queue)
			p.fetchFile(files, file, int64(len(dev)/2))
			var total int64
			for _, piece := range p.queue[before:] {
				if piece.Off < 0 || piece.Len <= 0 || piece.Len > filePieceSize {
					t.Fatalf("file %d: piece %+v", file, piece)
				}
				total += piece.Len
			}
			if total > files.Size(file)+64<<10 {
				t.Fatalf("file %d of %d bytes queued %d bytes of pieces", file, files.Size(file), total)
			}
		}
	})
}
