package bddrootfs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/layerblob"
	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/sandbox"
)

// pythonLayer turns the python3 rootfs (scripts/mkrootfs.sh) into an obd layer file: an ext4
// image of the tree, written into an LSMT layer.
func pythonLayer(t *testing.T) string {
	t.Helper()
	rootfs := testenv.PythonRootfs(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	const size = 512 << 20
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-d", rootfs, img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	w, err := lsmt.Create(filepath.Join(dir, "upper"), lsmt.CreateOptions{VirtualSize: size})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	const chunk = 64 << 10
	zero := make([]byte, chunk)
	for off := 0; off < len(data); off += chunk {
		if p := data[off : off+chunk]; !bytes.Equal(p, zero) {
			if _, err := w.WriteAt(p, int64(off)); err != nil {
				t.Fatal(err)
			}
		}
	}
	layer := filepath.Join(dir, "python.layer")
	f, err := os.Create(layer)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = layerblob.Write(f, layerblob.WriteOptions{TempDir: dir}, func(dst io.Writer) error {
		_, err := w.Commit(dst, lsmt.CommitOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return layer
}

func TestSandboxOnBDDImage(t *testing.T) {
	b := testenv.StartBDD(t)
	layer := pythonLayer(t)
	mounts := t.TempDir()
	p := &Provider{Client: b.Client, MountDir: mounts}
	m, err := sandbox.NewManager(sandbox.Config{StateDir: t.TempDir(), Rootfs: p, PoolSize: 2, KeepAlive: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	code := t.TempDir()
	os.Chmod(code, 0o755)
	os.WriteFile(filepath.Join(code, "main.py"), []byte("import sqlite3\ndef handler(e):\n    return {'sqlite': sqlite3.sqlite_version}\n"), 0o644)
	ctx := context.Background()
	for _, name := range []string{"a", "b"} { // two functions share one attached image
		if err := m.Register(ctx, sandbox.Function{Name: name, Image: layer, Entry: "main.handler", Dir: code}); err != nil {
			t.Fatal(err)
		}
	}
	list, err := b.Client.List(ctx, &bddv1.ListRequest{})
	if err != nil || len(list.GetDevices()) != 1 {
		t.Fatalf("bdd devices = %v, %v; want the one image attached once", list.GetDevices(), err)
	}
	for _, name := range []string{"a", "b"} {
		res, err := m.Invoke(ctx, name, json.RawMessage(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]string
		if json.Unmarshal(res.Output, &out); !strings.HasPrefix(out["sqlite"], "3.") {
			t.Fatalf("handler on the bdd image returned %s", res.Output)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	list, err = b.Client.List(ctx, &bddv1.ListRequest{})
	if err != nil || len(list.GetDevices()) != 0 {
		t.Errorf("bdd devices after Close = %v, %v; want none", list.GetDevices(), err)
	}
	if entries, _ := os.ReadDir(mounts); len(entries) != 0 {
		t.Errorf("mount dirs left after Close: %v", entries)
	}
}

func TestBadReferences(t *testing.T) {
	for _, ref := range []string{"", "relative/path", "registry/app@sha256:00:notanumber"} {
		if _, err := Layers(ref); !errors.Is(err, sandbox.ErrBadImage) {
			t.Errorf("Layers(%q) = %v, want ErrBadImage", ref, err)
		}
	}
	layers, err := Layers("/a/l0,127.0.0.1:5000/app@sha256:" + strings.Repeat("ab", 32) + ":123")
	if err != nil || len(layers) != 2 || layers[0].GetPath() != "/a/l0" || layers[1].GetBlob().GetSize() != 123 {
		t.Errorf("Layers = %v, %v", layers, err)
	}
}

// TestCleanupAfterKill: what a provider left mounted and attached, or attached only (its
// server killed), is unmounted and detached by the next one on the same mount dir.
func TestCleanupAfterKill(t *testing.T) {
	b := testenv.StartBDD(t)
	layer := pythonLayer(t)
	mounts := t.TempDir()
	ctx := context.Background()
	killed := &Provider{Client: b.Client, MountDir: mounts}
	dir, _, err := killed.Acquire(ctx, layer)
	if err != nil {
		t.Fatal(err)
	}
	// No release: as if the server died here. And an Attach that reached bdd just before,
	// whose mount never came: no mount dir names its device.
	layers, err := Layers(layer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Client.Attach(ctx, killed.attachRequest(layers)); err != nil {
		t.Fatal(err)
	}
	if err := (&Provider{Client: b.Client, MountDir: mounts}).Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), dir) {
		t.Errorf("%s still mounted after Cleanup", dir)
	}
	list, err := b.Client.List(ctx, &bddv1.ListRequest{})
	if err != nil || len(list.GetDevices()) != 0 {
		t.Errorf("bdd devices after Cleanup = %v, %v; want none", list.GetDevices(), err)
	}
	if entries, _ := os.ReadDir(mounts); len(entries) != 0 {
		t.Errorf("mount dirs left after Cleanup: %v", entries)
	}
}
