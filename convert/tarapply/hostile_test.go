package tarapply_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obdproject/obd/convert/internal/fixture"
	"github.com/obdproject/obd/convert/internal/fstree"
	"github.com/obdproject/obd/convert/tarapply"
)

// sandbox makes tmp/root (where layers go) next to tmp/outside holding a
// sentinel file, and returns root and a check that outside is unchanged.
func sandbox(t testing.TB) (root string, unchanged func() error) {
	tmp := t.TempDir()
	root = filepath.Join(tmp, "root")
	outside := filepath.Join(tmp, "outside")
	for _, d := range []string{root, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(outside, "sentinel"), []byte("untouched"), 0o644); err != nil {
		t.Fatal(err)
	}
	before, err := fstree.Snapshot(tmp, fstree.Options{Skip: []string{"root"}})
	if err != nil {
		t.Fatal(err)
	}
	return root, func() error {
		after, err := fstree.Snapshot(tmp, fstree.Options{Skip: []string{"root"}})
		if err != nil {
			return err
		}
		if d := fstree.Diff(before, after); len(d) > 0 {
			return errors.New("outside the root changed: " + strings.Join(d, "; "))
		}
		return nil
	}
}

func mustTar(t *testing.T, entries ...fixture.Entry) []byte { return fixture.MustTar(t, entries...) }

func TestHostile(t *testing.T) {
	requireRoot(t)
	var bigTar bytes.Buffer // a header claiming 1 TiB, then nothing
	if err := tar.NewWriter(&bigTar).WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1 << 40}); err != nil {
		t.Fatal(err)
	}
	truncated := mustTar(t, fixture.File("file", 0o644, 0, strings.Repeat("x", 5000)))[:2048]

	cases := []struct {
		name    string
		tar     []byte
		want    error // nil: must succeed
		errName string
	}{
		{"dotdot", mustTar(t, fixture.File("../outside/evil", 0o644, 0, "x")), tarapply.ErrUnsafePath, "../outside/evil"},
		{"absolute", mustTar(t, fixture.File("/tmp/evil", 0o644, 0, "x")), tarapply.ErrUnsafePath, "/tmp/evil"},
		{"inner dotdot", mustTar(t, fixture.File("a/../../outside/evil", 0o644, 0, "x")), tarapply.ErrUnsafePath, ""},
		{"device dotdot", mustTar(t, fixture.Node("../outside/null", tar.TypeChar, 1, 3, 0o666)), tarapply.ErrUnsafePath, ""},
		{"hardlink out", mustTar(t, fixture.Hardlink("h", "../outside/sentinel")), tarapply.ErrUnsafePath, "h"},
		{"hardlink absolute", mustTar(t, fixture.Hardlink("h", "/etc/passwd")), tarapply.ErrUnsafePath, "h"},
		{"symlink to missing dir", mustTar(t,
			fixture.Symlink("up", "../outside", 0),
			fixture.File("up/evil", 0o644, 0, "x")), errAny, "up/evil"},
		{"symlink dir escape", mustTar(t,
			fixture.Dir("outside", 0o755, 0),
			fixture.Symlink("up", "../outside", 0),
			fixture.File("up/evil", 0o644, 0, "x"),
			fixture.Symlink("abs", "/", 0),
			fixture.File("abs/evil2", 0o644, 0, "x"),
			fixture.File("up/.wh.sentinel", 0o644, 0, "")), nil, ""},
		{"write through planted symlink", mustTar(t,
			fixture.Symlink("f", "../outside/sentinel", 0),
			fixture.File("f", 0o644, 0, "overwrite")), nil, ""},
		{"hardlink through planted symlink dir", mustTar(t,
			fixture.Symlink("d", "..", 0),
			fixture.Hardlink("h", "d/outside/sentinel")), errAny, "h"},
		{"xattr through symlink", mustTar(t,
			fixture.Symlink("s", "../outside/sentinel", 0).WithXattr("trusted.evil", "x")), nil, ""},
		{"whiteout dotdot", mustTar(t, fixture.File(".wh...", 0o644, 0, "")), tarapply.ErrUnsafePath, ""},
		{"huge size", bigTar.Bytes(), tarapply.ErrTooLarge, "big"},
		{"long name", mustTar(t, fixture.File(strings.Repeat("n/", 2100)+"f", 0o644, 0, "x")), tarapply.ErrTooLarge, ""},
		{"truncated body", truncated, errAny, "file"},
		{"garbage", bytes.Repeat([]byte("garbage!"), 128), errAny, ""},
		{"duplicates", mustTar(t,
			fixture.File("x", 0o644, 0, "file"),
			fixture.Dir("x", 0o755, 0),
			fixture.File("x/y", 0o644, 0, "in dir"),
			fixture.File("x", 0o644, 0, "file again")), nil, ""},
		{"parent is a file", mustTar(t,
			fixture.File("p", 0o644, 0, "file"),
			fixture.File("p/child", 0o644, 0, "x")), errAny, "p/child"},
		{"hardlink to itself", mustTar(t, fixture.Hardlink("self", "self")), errAny, "self"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root, unchanged := sandbox(t)
			_, err := tarapply.Apply(context.Background(), root, bytes.NewReader(c.tar), tarapply.Options{MaxEntrySize: 1 << 30})
			switch {
			case c.want == nil && err != nil:
				t.Errorf("unexpected error: %v", err)
			case c.want != nil && err == nil:
				t.Errorf("no error, want %v", c.want)
			case c.want != nil && c.want != errAny && !errors.Is(err, c.want):
				t.Errorf("error %v, want %v", err, c.want)
			}
			if err != nil && c.errName != "" && !strings.Contains(err.Error(), c.errName) {
				t.Errorf("error %q does not name entry %q", err, c.errName)
			}
			if err := unchanged(); err != nil {
				t.Error(err)
			}
		})
	}
}

var errAny = errors.New("any error")

func TestTrashNameReserved(t *testing.T) {
	requireRoot(t)
	root, unchanged := sandbox(t)
	tr := mustTar(t, fixture.File("keep", 0o644, 0, "x"), fixture.File(tarapply.TrashName+"/x", 0o644, 0, "x"))
	_, err := tarapply.Apply(context.Background(), root, bytes.NewReader(tr), tarapply.Options{DeferRemoval: true})
	if !errors.Is(err, tarapply.ErrUnsupported) || !strings.Contains(err.Error(), tarapply.TrashName) {
		t.Errorf("err = %v, want ErrUnsupported naming %s", err, tarapply.TrashName)
	}
	if err := unchanged(); err != nil {
		t.Error(err)
	}
}

// TestDeferRemovalEmptiesTrash replaces and whites out entries with
// DeferRemoval and checks the trash is gone afterwards.
func TestDeferRemovalEmptiesTrash(t *testing.T) {
	requireRoot(t)
	root, _ := sandbox(t)
	for _, tr := range [][]byte{
		mustTar(t, fixture.Dir("d", 0o755, 0), fixture.File("d/a", 0o644, 0, "a"), fixture.File("d/b", 0o644, 0, "b")),
		mustTar(t, fixture.File("d/a", 0o644, 0, "new a"), fixture.File("d/.wh.b", 0o644, 0, "")),
	} {
		if _, err := tarapply.Apply(context.Background(), root, bytes.NewReader(tr), tarapply.Options{DeferRemoval: true}); err != nil {
			t.Fatal(err)
		}
	}
	names, err := os.ReadDir(filepath.Join(root, "d"))
	if err != nil || len(names) != 1 || names[0].Name() != "a" {
		t.Errorf("d holds %v, %v; want only a", names, err)
	}
	if _, err := os.Lstat(filepath.Join(root, tarapply.TrashName)); !os.IsNotExist(err) {
		t.Errorf("trash left behind: %v", err)
	}
}

func TestDuplicatesLastWins(t *testing.T) {
	requireRoot(t)
	root, _ := sandbox(t)
	tr := mustTar(t,
		fixture.File("x", 0o644, 0, "file"),
		fixture.Dir("x", 0o755, 0),
		fixture.File("x/y", 0o644, 0, "in dir"),
		fixture.File("x", 0o600, 0, "file again"),
		fixture.Symlink("f", "../outside/sentinel", 0),
		fixture.File("f", 0o644, 0, "replaced"))
	if _, err := tarapply.Apply(context.Background(), root, bytes.NewReader(tr), tarapply.Options{}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"x": "file again", "f": "replaced"} {
		b, err := os.ReadFile(filepath.Join(root, name))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
		if st := mustStat(t, filepath.Join(root, name)); !st.Mode().IsRegular() {
			t.Errorf("%s is %v, want a regular file", name, st.Mode())
		}
	}
}

// TestRootEntry: a tar entry named "/" (umoci insert writes one) is the root directory
// itself; it sets the root's mode and is no escape.
func TestRootEntry(t *testing.T) {
	requireRoot(t)
	root, _ := sandbox(t)
	tr := mustTar(t, fixture.Dir("/", 0o750, 0), fixture.File("a", 0o644, 0, "a"))
	if _, err := tarapply.Apply(context.Background(), root, bytes.NewReader(tr), tarapply.Options{}); err != nil {
		t.Fatalf("a layer with a %q entry: %v", "/", err)
	}
	if st := mustStat(t, root); st.Mode().Perm() != 0o750 {
		t.Errorf("root mode %v, want 0750 from the %q entry", st.Mode().Perm(), "/")
	}
	if b, err := os.ReadFile(filepath.Join(root, "a")); err != nil || string(b) != "a" {
		t.Errorf("a = %q, %v", b, err)
	}
}

func TestContextCancelled(t *testing.T) {
	root, _ := sandbox(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := tarapply.Apply(ctx, root, bytes.NewReader(mustTar(t, fixture.File("a", 0o644, 0, "x"))), tarapply.Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}
