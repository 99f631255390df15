package ckptstart

import (
	"context"
	"errors"
	"testing"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/ckptimage"
	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/obdimage"
	"github.com/obdproject/obd/sandbox/bddrootfs"
)

// TestCheckpointRestoreThroughRegistry: an initialized handler is checkpointed once and its
// dump pushed as an obd layer artifact of the function's image (an obd image in a real
// registry); a node with an empty bdd cache finds it, attaches it lazily through bdd and
// restores the handler from it, eagerly and with lazy pages: each restored process answers
// with the state it was dumped in. Another function of the image has no checkpoint.
func TestCheckpointRestoreThroughRegistry(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: criu, a registry and bdd")
	}
	criu := testenv.NeedCRIU(t)
	reg := testregistry.Start(t, testregistry.Options{})
	ref := reg.Host + "/obdtest/python:obd"
	testenv.ConvertPythonImage(t, testenv.StartBDD(t), ref)
	ctx := context.Background()
	resolvers, err := convert.RegistryOptions{}.Resolvers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	img, err := obdimage.Resolve(ctx, resolvers(), ref, nil)
	if err != nil {
		t.Fatal(err)
	}

	orig, _ := testenv.ColdStartHandler(t)
	pushed, err := Checkpoint(ctx, criu, orig, resolvers(), img, "fn", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if pushed.Layer.RangeTable == "" || pushed.Info.CRIU != criu.Version {
		t.Errorf("pushed %+v: want a layer with a range table, the criu version", pushed)
	}

	b := testenv.StartBDD(t) // a node that never read the checkpoint
	rootfs := &bddrootfs.Provider{Client: b.Client, MountDir: t.TempDir()}
	prep, err := Prepare(ctx, criu, rootfs, resolvers(), img, "fn")
	if err != nil {
		t.Fatal(err)
	}
	if prep.Checkpoint.Artifact.Digest != pushed.Artifact.Digest {
		t.Errorf("prepared %s, want the pushed %s", prep.Checkpoint.Artifact.Digest, pushed.Artifact.Digest)
	}
	for _, lazy := range []bool{false, true} {
		p, err := prep.Restore(ctx, lazy)
		if err != nil {
			t.Fatalf("lazy=%v: %v", lazy, err)
		}
		r, err := testenv.NewHandlerClient(p).Ask(7)
		p.Close()
		if err != nil || r.Served != 2 || r.Pid != 1 || r.V == "" {
			t.Fatalf("lazy=%v: reply %+v, %v; want served 2 (1 before the dump) by PID 1", lazy, r, err)
		}
	}
	list, err := b.Client.List(ctx, &bddv1.ListRequest{})
	if err != nil || len(list.GetDevices()) != 1 {
		t.Fatalf("bdd devices = %v, %v; want the checkpoint attached", list.GetDevices(), err)
	}
	stats, err := b.Client.Stats(ctx, &bddv1.StatsRequest{Id: list.GetDevices()[0].GetId()})
	if err != nil || stats.GetLayers()[0].GetBytesFetched() == 0 {
		t.Errorf("checkpoint device stats = %v, %v; want bytes fetched from the registry", stats, err)
	}
	if err := prep.Close(); err != nil {
		t.Fatal(err)
	}
	if list, _ := b.Client.List(ctx, &bddv1.ListRequest{}); len(list.GetDevices()) != 0 {
		t.Errorf("devices after Close: %v", list.GetDevices())
	}
	if _, err := Prepare(ctx, criu, rootfs, resolvers(), img, "other"); !errors.Is(err, ckptimage.ErrNoCheckpoint) {
		t.Errorf("another function: err = %v, want ErrNoCheckpoint", err)
	}
}
