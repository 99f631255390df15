package sandbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"

	"github.com/obdproject/obd/checkpoint"
	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/obdimage"
	"github.com/obdproject/obd/sandbox"
	"github.com/obdproject/obd/sandbox/bddrootfs"
	"github.com/obdproject/obd/sandbox/ckptstart"
)

// registryFixture is the python image as an obd image in an in-process registry, converted
// and its start traced by `obd convert --record-trace`, and a bdd that never read it.
type registryFixture struct {
	ref      string
	resolver remotes.Resolver
	bdd      *testenv.BDD
}

var fixtures = map[*testing.B]*registryFixture{}

func fixture(b *testing.B) *registryFixture {
	if f := fixtures[b]; f != nil {
		return f
	}
	reg := testregistry.Start(b, testregistry.Options{})
	f := &registryFixture{ref: reg.Host + "/bench/python:obd"}
	testenv.ConvertPythonImage(b, testenv.StartBDD(b), f.ref)
	resolvers, err := convert.RegistryOptions{}.Resolvers(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	f.resolver, f.bdd = resolvers(), testenv.StartBDD(b)
	fixtures[b] = f
	b.Cleanup(func() { delete(fixtures, b) })
	return f
}

func init() {
	sandbox.RegistryImage = func(b *testing.B) (sandbox.RootfsProvider, string) {
		f := fixture(b)
		return &bddrootfs.Provider{Client: f.bdd.Client, MountDir: b.TempDir(), Resolver: f.resolver}, f.ref
	}
	sandbox.CheckpointStarts = checkpointStarts
}

// checkpointStarts checkpoints package checkpoint's handler once into the registry (an
// artifact of the image) and measures, in one run, n cold starts of it against n restores
// from the checkpoint attached through bdd, eager and lazy; first is the first lazy restore,
// on a bdd cache without the checkpoint.
func checkpointStarts(b *testing.B, n int, gap time.Duration) (first time.Duration, cold, eager, lazy []time.Duration) {
	criu := testenv.NeedCRIU(b)
	f := fixture(b)
	ctx := context.Background()
	img, err := obdimage.Resolve(ctx, f.resolver, f.ref, nil)
	if err != nil {
		b.Fatal(err)
	}
	orig, _ := testenv.ColdStartHandler(b)
	if _, err := ckptstart.Checkpoint(ctx, criu, orig, f.resolver, img, "bench", b.TempDir()); err != nil {
		b.Fatal(err)
	}
	rootfs := &bddrootfs.Provider{Client: f.bdd.Client, MountDir: b.TempDir()}
	t0 := time.Now()
	prep, err := ckptstart.Prepare(ctx, criu, rootfs, f.resolver, img, "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer prep.Close()
	restore := func(lazy bool) time.Duration {
		start := time.Now()
		p, err := prep.Restore(ctx, lazy)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		if r, err := testenv.NewHandlerClient(p).Ask(2); err != nil || r.Served != 2 {
			b.Fatalf("restored handler: %+v, %v", r, err)
		}
		return time.Since(start)
	}
	restore(true)
	first = time.Since(t0) // find, attach, mount, restore, first answer
	for range n {
		time.Sleep(gap)
		start := time.Now()
		p, err := checkpoint.Start(testenv.CheckpointHandler(b))
		if err != nil {
			b.Fatal(err)
		}
		c := testenv.NewHandlerClient(p)
		if r, err := c.Read(); err != nil || !r.Ready {
			b.Fatalf("cold start: %+v, %v", r, err)
		}
		if _, err := c.Ask(1); err != nil {
			b.Fatal(err)
		}
		cold = append(cold, time.Since(start))
		p.Close()
		time.Sleep(gap)
		eager = append(eager, restore(false))
		time.Sleep(gap)
		lazy = append(lazy, restore(true))
	}
	return first, cold, eager, lazy
}
