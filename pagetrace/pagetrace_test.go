package pagetrace

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestEncodeDecode(t *testing.T) {
	in := Trace{{Path: "usr/bin/python3", Off: 0, Len: 8192}, {Path: "dir with space/\"q\"\n", Off: 1 << 40, Len: 4096}}
	out, err := Decode(in.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(out, in) {
		t.Fatalf("round trip = %v, want %v", out, in)
	}
	if empty, err := Decode(Trace(nil).Encode()); err != nil || len(empty) != 0 {
		t.Fatalf("empty trace: %v, %v", empty, err)
	}
}

func TestDecodeRejects(t *testing.T) {
	for name, text := range map[string]string{
		"no header":     `0 4096 "a"` + "\n",
		"other header":  "obd-pagetrace v2\n",
		"escapes root":  header + "\n0 4096 \"../etc/shadow\"\n",
		"absolute":      header + "\n0 4096 \"/etc/shadow\"\n",
		"unclean":       header + "\n0 4096 \"a/./b\"\n",
		"empty path":    header + "\n0 4096 \"\"\n",
		"unquoted":      header + "\n0 4096 a\n",
		"negative off":  header + "\n-1 4096 \"a\"\n",
		"zero length":   header + "\n0 0 \"a\"\n",
		"overflow":      header + "\n4611686018427387903 4096 \"a\"\n",
		"missing field": header + "\n0 \"a\"\n",
	} {
		if _, err := Decode([]byte(text)); !errors.Is(err, ErrBadTrace) {
			t.Errorf("%s: err = %v, want ErrBadTrace", name, err)
		}
	}
}

// dropCache evicts path's pages, as a cold start finds them.
func dropCache(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

// TestRecordWarm: Record lists what was read since the cache was dropped; after another drop,
// Warm brings exactly that back, and Record sees it again.
func TestRecordWarm(t *testing.T) {
	root := t.TempDir()
	pageSize := int64(os.Getpagesize())
	data := make([]byte, 64*pageSize)
	for _, name := range []string{"lib/big.so", "lib/untouched", "bin/app"} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(root, "bin/link")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"lib/big.so", "lib/untouched", "bin/app"} {
		dropCache(t, filepath.Join(root, name))
	}
	probe, err := Record(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	if len(probe) != 0 {
		t.Skipf("this file system keeps pages after FADV_DONTNEED (%v): nothing to measure", probe)
	}
	read := func(name string, off, n int64) {
		f, err := os.Open(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		// FADV_RANDOM keeps readahead from adding pages around the read.
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
			t.Fatal(err)
		}
		if _, err := f.ReadAt(make([]byte, n), off); err != nil {
			t.Fatal(err)
		}
	}
	read("bin/app", 0, pageSize)
	read("lib/big.so", 8*pageSize, 3*pageSize)
	want := Trace{{Path: "bin/app", Off: 0, Len: pageSize}, {Path: "lib/big.so", Off: 8 * pageSize, Len: 3 * pageSize}}
	got, err := Record(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Record = %v, want %v", got, want)
	}

	for _, name := range []string{"lib/big.so", "bin/app"} {
		dropCache(t, filepath.Join(root, name))
	}
	// A missing file and a symlink out of the root are skipped, not followed.
	withStrangers := append(Trace{{Path: "gone", Off: 0, Len: pageSize}, {Path: "bin/link", Off: 0, Len: pageSize}}, got...)
	asked, err := Warm(context.Background(), root, withStrangers, 4)
	if err != nil {
		t.Fatal(err)
	}
	if asked != 4*pageSize {
		t.Fatalf("Warm asked for %d bytes, want %d", asked, 4*pageSize)
	}
	// WILLNEED only starts the reads; mincore counts a page once it has arrived.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		again, err := Record(context.Background(), root)
		if err != nil {
			t.Fatal(err)
		}
		if reflect.DeepEqual(again, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after Warm, Record = %v, want %v", again, want)
		}
	}
}

func TestWarmStopsWithContext(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "f"), make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Warm(ctx, root, Trace{{Path: "f", Off: 0, Len: 4096}}, 2); !errors.Is(err, context.Canceled) {
		t.Fatalf("Warm with a cancelled context: err = %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(Trace{{Path: "usr/lib/x.so", Off: 4096, Len: 8192}}.Encode())
	f.Add([]byte(header + "\n0 1 \"a\"\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tr, err := Decode(data)
		if err != nil {
			if !errors.Is(err, ErrBadTrace) {
				t.Fatalf("error %v does not wrap ErrBadTrace", err)
			}
			return
		}
		again, err := Decode(tr.Encode())
		if err != nil || !reflect.DeepEqual(again, tr) {
			t.Fatalf("re-encoded trace does not round trip: %v", err)
		}
	})
}
