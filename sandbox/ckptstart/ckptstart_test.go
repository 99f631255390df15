package ckptstart

import (
	"context"
	"errors"
	"testing"

	"github.com/containerd/containerd/v2/core/remotes"
	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/checkpoint"
	"github.com/obdproject/obd/ckptimage"
	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/obdimage"
	"github.com/obdproject/obd/sandbox/bddrootfs"
)

// TestCheckpointRestoreThroughRegistry: an initialized handler, unconfined or confined on the
// function's image (an obd image in a real registry, mounted through bdd), is checkpointed once
// and its dump pushed as an obd layer artifact of the image; a node with an empty bdd cache
// finds it, attaches it lazily through bdd and restores the handler from it, eagerly and with
// lazy pages (confined: where the node allows unprivileged userfaultfd), into its own mount of
// the image when confined: each restored process answers with the state it was dumped in.
// Another function of the image has no checkpoint.
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

	for _, confined := range []bool{false, true} {
		t.Run(map[bool]string{false: "unconfined", true: "confined"}[confined], func(t *testing.T) {
			restoreThroughRegistry(t, criu, ref, resolvers(), img, confined)
		})
	}
	b := testenv.StartBDD(t)
	rootfs := &bddrootfs.Provider{Client: b.Client, MountDir: t.TempDir()}
	if _, err := Prepare(ctx, criu, rootfs, resolvers(), img, "other", ""); !errors.Is(err, ckptimage.ErrNoCheckpoint) {
		t.Errorf("another function: err = %v, want ErrNoCheckpoint", err)
	}
	// A pin of something that is not a checkpoint of the image: the image's own manifest.
	if _, err := Prepare(ctx, criu, rootfs, resolvers(), img, "fn", img.Manifest.Digest); !errors.Is(err, ckptimage.ErrBadArtifact) {
		t.Errorf("a pin of the image manifest: err = %v, want ErrBadArtifact", err)
	}
}

// restoreThroughRegistry checkpoints the handler (confined on the image as a node mounts it,
// or not) as function "fn-confined" or "fn" and restores it on a node whose bdd never read
// the checkpoint or the image.
func restoreThroughRegistry(t *testing.T, criu *checkpoint.CRIU, ref string, resolver remotes.Resolver, img obdimage.Image, confined bool) {
	ctx := context.Background()
	fn, spec := "fn", testenv.CheckpointHandler(t)
	if confined {
		fn = "fn-confined"
		node := &bddrootfs.Provider{Client: testenv.StartBDD(t).Client, MountDir: testenv.SearchableDir(t), Resolver: resolver}
		root, release, err := node.Acquire(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		spec = testenv.ConfinedHandler(t, root)
	}
	orig, _ := testenv.ColdStartHandler(t, spec)
	pushed, err := Checkpoint(ctx, criu, orig, resolver, img, fn, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if pushed.Layer.RangeTable == "" || pushed.Info.CRIU != criu.Version {
		t.Errorf("pushed %+v: want a layer with a range table, the criu version", pushed)
	}

	b := testenv.StartBDD(t) // a node that never read the checkpoint
	rootfs := &bddrootfs.Provider{Client: b.Client, MountDir: testenv.SearchableDir(t), Resolver: resolver}
	var opts checkpoint.RestoreOptions
	if confined {
		root, release, err := rootfs.Acquire(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		opts.Root = root
	}
	// Pinned when confined, the newest of the function otherwise.
	var pin digest.Digest
	if confined {
		pin = pushed.Artifact.Digest
	}
	prep, err := Prepare(ctx, criu, rootfs, resolver, img, fn, pin)
	if err != nil {
		t.Fatal(err)
	}
	if prep.Checkpoint.Artifact.Digest != pushed.Artifact.Digest {
		t.Errorf("prepared %s, want the pushed %s", prep.Checkpoint.Artifact.Digest, pushed.Artifact.Digest)
	}
	for _, lazy := range []bool{false, true} {
		opts.LazyPages = lazy
		p, err := prep.Restore(ctx, opts)
		if errors.Is(err, checkpoint.ErrLazyConfined) && confined && lazy {
			continue // vm.unprivileged_userfaultfd is 0 here
		}
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
	var fetched uint64
	for _, d := range list.GetDevices() {
		if d.GetLayers()[0].GetBlob().GetDigest() == pushed.Layer.Digest.String() {
			stats, err := b.Client.Stats(ctx, &bddv1.StatsRequest{Id: d.GetId()})
			if err != nil {
				t.Fatal(err)
			}
			fetched = stats.GetLayers()[0].GetBytesFetched()
		}
	}
	if err != nil || fetched == 0 {
		t.Errorf("checkpoint device: %d bytes fetched, %v; want bytes fetched from the registry", fetched, err)
	}
	if err := prep.Close(); err != nil {
		t.Fatal(err)
	}
}
