package ckptstart

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/sandbox"
	"github.com/obdproject/obd/sandbox/bddrootfs"
	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// TestManagerRestoresFromTheRegistry: two nodes, each a bdd with an empty cache and a sandbox
// manager with no zygotes and the registry as its checkpoint store, run one function of an
// obd image by reference. The first node makes the function's checkpoint and pushes it; the
// second finds it in the registry, attaches it lazily through its bdd and serves restored
// starts from it without making its own. A key nothing was stored under finds none.
func TestManagerRestoresFromTheRegistry(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: criu, a registry, bdd and sandboxes")
	}
	criu := testenv.NeedCRIU(t)
	reg := testregistry.Start(t, testregistry.Options{})
	ref := reg.Host + "/obdtest/python:obd"
	testenv.ConvertPythonImage(t, testenv.StartBDD(t), ref)
	resolvers, err := convert.RegistryOptions{}.Resolvers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	code := testenv.SearchableDir(t)
	os.Chmod(code, 0o755)
	src := "import sqlite3\nSTATE = sqlite3.sqlite_version\ndef handler(e):\n    return {'state': STATE}\n"
	if err := os.WriteFile(filepath.Join(code, "main.py"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	node := func() (*sandbox.Manager, *testenv.BDD, string) {
		b := testenv.StartBDD(t)
		rootfs := &bddrootfs.Provider{Client: b.Client, MountDir: testenv.SearchableDir(t), Resolver: resolvers()}
		state := testenv.SearchableDir(t)
		m, err := sandbox.NewManager(sandbox.Config{StateDir: state, Rootfs: rootfs, PoolSize: 2, NoZygotes: true, CRIU: criu,
			Checkpoints: &Store{Rootfs: rootfs, Resolver: resolvers(), CRIU: criu, WorkDir: t.TempDir()}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			m.Close()
			if t.Failed() {
				log, _ := os.ReadFile(filepath.Join(state, "sandboxes.log"))
				t.Logf("sandboxes.log:\n%s", log)
			}
		})
		if err := m.Register(context.Background(), sandbox.Function{Name: "f", Image: ref, Entry: "main.handler", Dir: code, Checkpoint: true}); err != nil {
			t.Fatal(err)
		}
		return m, b, state
	}
	restoredStart := func(m *sandbox.Manager) {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
			res, err := m.Invoke(context.Background(), "f", json.RawMessage(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			var out map[string]string
			if json.Unmarshal(res.Output, &out); out["state"] == "" {
				t.Fatalf("handler returned %s", res.Output)
			}
			if res.Path == sandboxapi.Restored {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no restored start after 2 minutes (last path %s)", res.Path)
			}
		}
	}

	first, _, _ := node()
	restoredStart(first)
	second, b, state := node()
	restoredStart(second)
	if made, _ := os.ReadDir(filepath.Join(state, "checkpoints")); len(made) != 0 {
		t.Errorf("the second node made a checkpoint of its own (%d), want the registry's", len(made))
	}
	list, err := b.Client.List(context.Background(), &bddv1.ListRequest{})
	if err != nil || len(list.GetDevices()) != 2 {
		t.Fatalf("second node's bdd devices: %v, %v; want the image and the checkpoint", list.GetDevices(), err)
	}

	rootfs := &bddrootfs.Provider{Client: b.Client, MountDir: testenv.SearchableDir(t), Resolver: resolvers()}
	st := &Store{Rootfs: rootfs, Resolver: resolvers(), CRIU: criu, WorkDir: t.TempDir()}
	if dir, _, err := st.Get(context.Background(), ref, "f@0000000000000000"); err != nil || dir != "" {
		t.Errorf("a key nothing was stored under: %q, %v; want none", dir, err)
	}
}
