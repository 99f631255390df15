package sandboxapi

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestArchiveDir(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{"main.py": "def handler(e):\n    return e\n", "lib/util.py": "X = 1\n"}
	for name, body := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := ArchiveDir(dir, &buf); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			got[h.Name] = "dir"
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			got[h.Name] = string(b)
		default:
			t.Errorf("entry %s of type %c: want only files and directories", h.Name, h.Typeflag)
		}
	}
	want := map[string]string{"lib": "dir", "lib/util.py": files["lib/util.py"], "main.py": files["main.py"]}
	if len(got) != len(want) {
		t.Fatalf("archive holds %v, want %v", got, want)
	}
	for name, body := range want {
		if got[name] != body {
			t.Errorf("%s: got %q, want %q", name, got[name], body)
		}
	}
}

func TestArchiveDirMissing(t *testing.T) {
	if err := ArchiveDir(filepath.Join(t.TempDir(), "nope"), io.Discard); err == nil {
		t.Fatal("archive of a missing dir succeeded")
	}
}
