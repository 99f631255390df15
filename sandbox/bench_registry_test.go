package sandbox_test

import (
	"context"
	"errors"
	"fmt"
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

// checkpointStarts measures the checkpoint/restore path for the handler unconfined and
// confined on the image (mounted through the fixture's bdd), each checkpointed once into the
// registry.
func checkpointStarts(b *testing.B, n int, gap time.Duration) []sandbox.CheckpointRun {
	criu, err := checkpoint.Find()
	if err != nil { // the other start paths are measured all the same
		fmt.Printf("checkpoint/restore: skipped: %v (make deps builds criu)\n", err)
		return nil
	}
	f := fixture(b)
	ctx := context.Background()
	img, err := obdimage.Resolve(ctx, f.resolver, f.ref, nil)
	if err != nil {
		b.Fatal(err)
	}
	rootfs := &bddrootfs.Provider{Client: f.bdd.Client, MountDir: testenv.SearchableDir(b), Resolver: f.resolver}
	root, release, err := rootfs.Acquire(ctx, f.ref)
	if err != nil {
		b.Fatal(err)
	}
	defer release()
	return []sandbox.CheckpointRun{
		checkpointRun(b, criu, rootfs, f.resolver, img, "unconfined", "", testenv.CheckpointHandler(b), checkpoint.RestoreOptions{}, n, gap),
		checkpointRun(b, criu, rootfs, f.resolver, img, "confined on the image", "confined-", testenv.ConfinedHandler(b, root),
			checkpoint.RestoreOptions{Root: root}, n, gap),
	}
}

// checkpointRun checkpoints spec's handler once as function name and measures n cold starts
// of it against n restores, eager and lazy (when the node allows it).
func checkpointRun(b *testing.B, criu *checkpoint.CRIU, rootfs *bddrootfs.Provider, resolver remotes.Resolver, img obdimage.Image,
	name, metric string, spec checkpoint.Spec, opts checkpoint.RestoreOptions, n int, gap time.Duration) sandbox.CheckpointRun {
	ctx := context.Background()
	run := sandbox.CheckpointRun{Name: name, Metric: metric}
	orig, _ := testenv.ColdStartHandler(b, spec)
	pushed, err := ckptstart.Checkpoint(ctx, criu, orig, resolver, img, metric+"bench", b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	prep, err := ckptstart.Prepare(ctx, criu, rootfs, resolver, img, metric+"bench", pushed.Artifact.Digest)
	if err != nil {
		b.Fatal(err)
	}
	defer prep.Close()
	restore := func(lazy bool) (time.Duration, error) {
		start := time.Now()
		o := opts
		o.LazyPages = lazy
		p, err := prep.Restore(ctx, o)
		if err != nil {
			return 0, err
		}
		defer p.Close()
		if r, err := testenv.NewHandlerClient(p).Ask(2); err != nil || r.Served != 2 {
			b.Fatalf("restored handler: %+v, %v", r, err)
		}
		return time.Since(start), nil
	}
	_, lazyErr := restore(true)
	if lazyErr != nil && !errors.Is(lazyErr, checkpoint.ErrLazyConfined) {
		b.Fatal(lazyErr)
	}
	if lazyErr != nil {
		if _, err := restore(false); err != nil {
			b.Fatal(err)
		}
	}
	run.First = time.Since(t0) // find, attach, mount, restore, first answer
	for range n {
		time.Sleep(gap)
		start := time.Now()
		p, _ := testenv.ColdStartHandler(b, spec)
		run.Cold = append(run.Cold, time.Since(start))
		p.Close()
		time.Sleep(gap)
		d, err := restore(false)
		if err != nil {
			b.Fatal(err)
		}
		run.Eager = append(run.Eager, d)
		if lazyErr == nil {
			time.Sleep(gap)
			d, err := restore(true)
			if err != nil {
				b.Fatal(err)
			}
			run.Lazy = append(run.Lazy, d)
		}
	}
	return run
}
