package snapshotter

import (
	"context"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/internal/testenv"
)

// indexRegistry answers FetchIndex from a map of manifest digest to indexed layers.
type indexRegistry struct {
	bddv1.DaemonClient // nil: only FetchIndex is called
	mu                 sync.Mutex
	indexes            map[string][]*bddv1.IndexedBlob
	calls              int
}

func (r *indexRegistry) FetchIndex(_ context.Context, req *bddv1.FetchIndexRequest, _ ...grpc.CallOption) (*bddv1.FetchIndexResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	layers, ok := r.indexes[req.GetManifestDigest()]
	return &bddv1.FetchIndexResponse{Found: ok, Layers: layers, ArtifactDigest: digest.FromString("artifact").String()}, nil
}

func indexedBlob(layer digest.Digest) *bddv1.IndexedBlob {
	b := func(s string) *bddv1.RemoteBlob {
		return &bddv1.RemoteBlob{Ref: "registry.test/app", Digest: digest.FromString(s + layer.String()).String(), Size: 100}
	}
	return &bddv1.IndexedBlob{Blob: &bddv1.RemoteBlob{Ref: "registry.test/app", Digest: layer.String(), Size: 5000}, GzIndex: b("x"), Meta: b("m"), Map: b("p")}
}

func unpackLabels(target string, manifest, layer digest.Digest) snapshots.Opt {
	return snapshots.WithLabels(map[string]string{
		snapshots.LabelSnapshotRef:    target,
		imagelabels.CRIImageRef:       "registry.test/app:v1",
		imagelabels.CRIManifestDigest: manifest.String(),
		imagelabels.CRILayerDigest:    layer.String(),
	})
}

// An ordinary OCI layer is recorded lazily, as an indexed layer, when its image has an
// index; without one, or on a parent unpacked as usual, it is unpacked as usual.
func TestIndexedLayersAreLazy(t *testing.T) {
	ctx := context.Background()
	indexed, plain := digest.FromString("indexed manifest"), digest.FromString("plain manifest")
	l0, l1 := digest.FromString("layer 0"), digest.FromString("layer 1")
	reg := &indexRegistry{indexes: map[string][]*bddv1.IndexedBlob{indexed.String(): {indexedBlob(l0), indexedBlob(l1)}}}
	sn, err := NewSnapshotter(t.TempDir(), WithRemoteIndexes(NewRemoteIndexes(reg, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()

	if _, err := sn.Prepare(ctx, "extract-0", "", unpackLabels("idx-0", indexed, l0)); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of an indexed layer: %v, want AlreadyExists (recorded lazily)", err)
	}
	if _, err := sn.Prepare(ctx, "extract-1", "idx-0", unpackLabels("idx-1", indexed, l1)); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of the second indexed layer: %v, want AlreadyExists", err)
	}
	if reg.calls != 1 {
		t.Fatalf("%d FetchIndex calls for one image, want 1", reg.calls)
	}
	var id string
	if err := sn.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		id, _, _, err = storage.GetInfo(ctx, "idx-1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	rec, ok, err := readLayerRecord(sn.layerRecordPath(id))
	if err != nil || !ok || rec.Index == nil || rec.Digest != l1 || rec.Manifest != indexed || rec.Size != 5000 ||
		rec.Index.Meta.Digest != digest.FromString("m"+l1.String()) {
		t.Fatalf("layer record %+v (%v, %v): want the indexed layer with its index", rec, ok, err)
	}

	// No index: the layer is an ordinary active snapshot for the unpacker.
	if _, err := sn.Prepare(ctx, "extract-plain", "", unpackLabels("plain-0", plain, l0)); err != nil {
		t.Fatalf("Prepare of a layer without an index: %v, want the usual active snapshot", err)
	}
	if err := sn.Commit(ctx, "plain-0", "extract-plain"); err != nil {
		t.Fatal(err)
	}
	// An indexed layer on a parent unpacked as usual is unpacked as usual too. (A child of
	// an unpacked snapshot takes its parent's owner, which needs real root.)
	testenv.RequireRoot(t)
	if _, err := sn.Prepare(ctx, "extract-mixed", "plain-0", unpackLabels("mixed-1", indexed, l1)); err != nil {
		t.Fatalf("Prepare of an indexed layer on an unpacked parent: %v, want the usual active snapshot", err)
	}
	if info, err := sn.Stat(ctx, "extract-mixed"); err != nil || info.Kind != snapshots.KindActive {
		t.Fatalf("Stat = %+v, %v; want an active snapshot", info, err)
	}
}
