package main

import (
	"context"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/sandbox/sandboxapi"
)

// TestImageByReference runs the server binary on a real bdd and registers a function whose
// image is an obd image in a real registry, named by reference (obd convert --record-trace
// pushed it with its start trace): it is resolved, attached lazily and run; a reference the
// registry does not have fails the registration; SIGTERM detaches the image.
func TestImageByReference(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: a registry, bdd and the server")
	}
	bin, _ := buildServer(t)
	reg := testregistry.Start(t, testregistry.Options{})
	ref := reg.Host + "/obdtest/python:obd"
	testenv.ConvertPythonImage(t, testenv.StartBDD(t), ref)
	b := testenv.StartBDD(t) // the node's bdd: it never read the image
	tmp := t.TempDir()
	srv, c, logs := startServer(t, bin, "", filepath.Join(tmp, "state"), nil, "--bdd-socket", b.Socket)
	defer srv.Process.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var tarball strings.Builder
	if err := sandboxapi.ArchiveDir(writeHandler(t), &tarball); err != nil {
		t.Fatal(err)
	}
	spec := sandboxapi.FunctionSpec{Name: "hello", Image: ref, Entry: "main.handler"}
	if err := c.Register(ctx, spec, strings.NewReader(tarball.String())); err != nil {
		t.Fatal(err)
	}
	res, _, err := c.Run(ctx, "hello", []byte(`{"who":"ref"}`))
	if err != nil || !strings.Contains(string(res), `"ref"`) || !strings.Contains(string(res), `"3.`) {
		t.Fatalf("run on the image by reference: %s, %v", res, err)
	}
	missing := sandboxapi.FunctionSpec{Name: "missing", Image: reg.Host + "/obdtest/python:missing", Entry: "main.handler"}
	if err := c.Register(ctx, missing, strings.NewReader(tarball.String())); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("register on a missing tag: err = %v, want not found", err)
	}
	if err := srv.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := srv.Wait(); err != nil {
		for line := range logs {
			t.Log(line)
		}
		t.Fatalf("server exit: %v", err)
	}
	if list, err := b.Client.List(ctx, &bddv1.ListRequest{}); err != nil || len(list.GetDevices()) != 0 {
		t.Errorf("bdd devices after SIGTERM = %v, %v; want none", list.GetDevices(), err)
	}
}

// TestRestoreStartsThroughTheRegistry runs the server binary with --checkpoints and
// --checkpoint-registry (and no zygotes, so a start is cold or restored) on two nodes, each
// with its own bdd: on the first a function registered with checkpoint is checkpointed, its
// starts become restored ones and the checkpoint is pushed; the second node restores from the
// registry's checkpoint without making its own.
func TestRestoreStartsThroughTheRegistry(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: a registry, bdd, criu and the server")
	}
	testenv.NeedCRIU(t)
	bin, _ := buildServer(t)
	reg := testregistry.Start(t, testregistry.Options{})
	ref := reg.Host + "/obdtest/python:obd"
	testenv.ConvertPythonImage(t, testenv.StartBDD(t), ref)
	var tarball strings.Builder
	if err := sandboxapi.ArchiveDir(writeHandler(t), &tarball); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	node := func() []string {
		b := testenv.StartBDD(t)
		srv, c, logs := startServer(t, bin, "", filepath.Join(testenv.SearchableDir(t), "state"), nil, "--bdd-socket", b.Socket,
			"--checkpoints", "--checkpoint-registry", "--no-zygotes", "--keep-alive", "0s")
		defer srv.Process.Kill()
		spec := sandboxapi.FunctionSpec{Name: "hello", Image: ref, Entry: "main.handler", Checkpoint: true}
		if err := c.Register(ctx, spec, strings.NewReader(tarball.String())); err != nil {
			t.Fatal(err)
		}
		for {
			res, path, err := c.Run(ctx, "hello", []byte(`{"who":"restored"}`))
			if err != nil || !strings.Contains(string(res), `"restored"`) {
				t.Fatalf("run: %s, %v", res, err)
			}
			if path == sandboxapi.Restored {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if st, err := c.Stats(ctx, "hello"); err != nil || st.Restored == 0 {
			t.Fatalf("stats %+v, %v; want restored starts counted", st, err)
		}
		srv.Process.Signal(syscall.SIGTERM)
		var lines []string
		for line := range logs { // until the server's stderr closes
			lines = append(lines, line)
		}
		srv.Wait()
		return lines
	}
	has := func(lines []string, msg string) bool {
		for _, l := range lines {
			if strings.Contains(l, msg) {
				return true
			}
		}
		return false
	}
	first := node()
	if !has(first, "checkpoint stored") {
		t.Fatalf("first node did not store its checkpoint:\n%s", strings.Join(first, "\n"))
	}
	second := node()
	if !has(second, "checkpoint found in the store") || has(second, "checkpoint made") {
		t.Fatalf("second node did not restore the registry's checkpoint (%d lines):\n%s", len(second), strings.Join(second, "\n"))
	}
}
