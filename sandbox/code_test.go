package sandbox

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

type entry struct {
	name string
	typ  byte
	body string
}

func makeTar(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o600, Size: int64(len(e.body))}
		if e.typ == tar.TypeSymlink {
			h.Linkname, h.Size = "/etc/passwd", 0
		}
		if e.typ == tar.TypeDir {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func TestExtractCode(t *testing.T) {
	archive := makeTar(t, entry{"pkg/", tar.TypeDir, ""}, entry{"pkg/util.py", tar.TypeReg, "X = 1\n"}, entry{"main.py", tar.TypeReg, "def handler(e): return e\n"})
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(archive)
	zw.Close()
	for name, data := range map[string][]byte{"tar": archive, "tar.gz": gz.Bytes()} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := ExtractCode(bytes.NewReader(data), dir); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(dir, "pkg/util.py"))
			if err != nil || string(got) != "X = 1\n" {
				t.Fatalf("pkg/util.py = %q, %v", got, err)
			}
			st, _ := os.Stat(filepath.Join(dir, "main.py"))
			if st.Mode().Perm() != 0o644 {
				t.Errorf("main.py mode %v, want 0644 (readable by the sandbox user)", st.Mode().Perm())
			}
		})
	}
}

func TestExtractCodeRefusesHostileArchives(t *testing.T) {
	cases := map[string][]byte{
		"dotdot":    makeTar(t, entry{"../escape.py", tar.TypeReg, "x"}),
		"absolute":  makeTar(t, entry{"/etc/evil", tar.TypeReg, "x"}),
		"symlink":   makeTar(t, entry{"link", tar.TypeSymlink, ""}),
		"duplicate": makeTar(t, entry{"a.py", tar.TypeReg, "1"}, entry{"a.py", tar.TypeReg, "2"}),
		"garbage":   []byte("this is not a tar archive, not at all, no headers here....."),
		"badgzip":   {0x1f, 0x8b, 0, 1, 2, 3},
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := ExtractCode(bytes.NewReader(data), dir); !errors.Is(err, ErrBadCode) {
				t.Fatalf("ExtractCode = %v, want ErrBadCode", err)
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "escape.py")); err == nil {
				t.Fatal("an entry was written outside the code directory")
			}
		})
	}
}

func FuzzExtractCode(f *testing.F) {
	f.Add(makeTar(f, entry{"main.py", tar.TypeReg, "def handler(e): return e\n"}))
	f.Add(makeTar(f, entry{"d/", tar.TypeDir, ""}, entry{"d/../../x", tar.TypeReg, "x"}))
	f.Add([]byte{0x1f, 0x8b, 8, 0})
	root := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		parent, err := os.MkdirTemp(root, "")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(parent)
		dir := filepath.Join(parent, "code")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		err = ExtractCode(bytes.NewReader(data), dir)
		if err != nil && !errors.Is(err, ErrBadCode) {
			t.Fatalf("error not wrapping ErrBadCode: %v", err)
		}
		entries, _ := os.ReadDir(parent)
		if len(entries) != 1 {
			t.Fatalf("archive wrote outside the code directory: %v", entries)
		}
	})
}

func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 9, '1'})
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := readFrame(bytes.NewReader(data))
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := writeFrame(&buf, msg); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), data[:4+len(msg)]) {
			t.Fatalf("frame does not round-trip")
		}
	})
}
