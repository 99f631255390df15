package bdd_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/ociartifact"
	"github.com/obdproject/obd/ociindex"
)

// tarGz returns a gzip layer tar of the tree at root and its diff ID.
func tarGz(t *testing.T, root string) ([]byte, digest.Digest) {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		h.Name = rel
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.Copy(tw, f)
			return err
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw.Bytes())
	zw.Close()
	return gz.Bytes(), digest.FromBytes(raw.Bytes())
}

// pushPlainImage pushes a one-layer gzip OCI image of tree to reg and returns its reference
// and manifest digest.
func pushPlainImage(t *testing.T, reg *testregistry.Registry, repo, tree string) (string, digest.Digest, int64) {
	t.Helper()
	layer, diffID := tarGz(t, tree)
	ld := reg.PushBlob(t, repo, layer)
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + diffID.String() + `"]}}`)
	cfgDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: reg.PushBlob(t, repo, cfg), Size: int64(len(cfg))}
	man, err := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: cfgDesc, Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: ld, Size: int64(len(layer))}}})
	if err != nil {
		t.Fatal(err)
	}
	return reg.Host + "/" + repo + ":v1", reg.PushManifest(t, repo, "v1", ocispec.MediaTypeImageManifest, man), int64(len(layer))
}

// TestFUSEIndexedOCIImage indexes an ordinary gzip image in a registry (obd index), finds
// the index through bdd's FetchIndex, attaches the image's layers as indexed layers and
// checks the mounted tree; reading one file fetches a fraction of the blob.
func TestFUSEIndexedOCIImage(t *testing.T) {
	requireBlockFacilities(t)
	tree := makeTree(t, 11, 40)
	reg := testregistry.Start(t, testregistry.Options{})
	ref, manifest, blobSize := pushPlainImage(t, reg, "plain/app", tree)

	d := startDaemon(t, "")
	if resp, err := d.Client.FetchIndex(d.ctx(), &bddv1.FetchIndexRequest{Ref: ref, ManifestDigest: manifest.String()}); err != nil || resp.GetFound() {
		t.Fatalf("FetchIndex before indexing = %v, %v; want not found", resp, err)
	}
	c, err := convert.New(convert.Options{WorkDir: t.TempDir(), VirtualSize: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := c.Index(ctx, ref, convert.IndexOptions{Spacing: 256 << 10, Push: true}); err != nil {
		t.Fatal(err)
	}
	resp, err := d.Client.FetchIndex(d.ctx(), &bddv1.FetchIndexRequest{Ref: ref, ManifestDigest: manifest.String()})
	if err != nil || !resp.GetFound() || len(resp.GetLayers()) != 1 {
		t.Fatalf("FetchIndex = %v, %v; want one indexed layer", resp, err)
	}
	var layers []*bddv1.Layer
	for _, l := range resp.GetLayers() {
		layers = append(layers, &bddv1.Layer{Source: &bddv1.Layer_Indexed{Indexed: l}})
	}
	// An index blob that is not what its digest says is refused at attach.
	bad := proto.Clone(resp.GetLayers()[0]).(*bddv1.IndexedBlob)
	bad.Map = bad.GetGzIndex()
	bad.Map.Digest = digest.FromString("other").String()
	if _, err := d.Client.Attach(d.ctx(), &bddv1.AttachRequest{Layers: []*bddv1.Layer{{Source: &bddv1.Layer_Indexed{Indexed: bad}}},
		ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE}); err == nil {
		t.Fatal("attach of an indexed layer with a wrong map blob succeeded")
	}

	if _, err := d.Client.StartTrace(d.ctx(), &bddv1.StartTraceRequest{}); err != nil {
		t.Fatal(err)
	}
	dev := d.attach(&bddv1.AttachRequest{Layers: layers, ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE})
	mnt := mount(t, dev.GetDevicePath(), true)

	// One file of ~3 MiB (i%5 == 4): its spans, not the whole blob.
	want, err := os.ReadFile(filepath.Join(tree, "d4/e1/f0004"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(mnt, "d4/e1/f0004"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read through the index: %d bytes, %v; want the file's %d", len(got), err, len(want))
	}
	// The start's trace names the image's layer blob alone: the index blobs, read quietly,
	// stay out of it, so registry traces of indexed images name only the image's layers.
	tr, err := d.Client.StopTrace(d.ctx(), &bddv1.StopTraceRequest{})
	if err != nil {
		t.Fatal(err)
	}
	trace, err := blocktrace.Decode(tr.GetTrace())
	if err != nil {
		t.Fatal(err)
	}
	if len(trace.Blobs) != 1 || trace.Blobs[0].Digest.String() != resp.GetLayers()[0].GetBlob().GetDigest() {
		t.Fatalf("trace of the start names %d blobs (%v), want the image's layer blob alone", len(trace.Blobs), trace.Blobs)
	}
	stats, err := d.Client.Stats(d.ctx(), &bddv1.StatsRequest{Id: dev.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	fetched := stats.GetLayers()[0].GetBytesFetched()
	t.Logf("blob %d bytes; one file of %d read fetched %d", blobSize, len(want), fetched)
	if fetched == 0 || int64(fetched) > blobSize/2 {
		t.Errorf("reading one file fetched %d bytes of the %d-byte blob: want some, and under half", fetched, blobSize)
	}
	compareSums(t, treeSums(t, tree), treeSums(t, mnt))

	// On a fresh daemon a replay of the trace brings the seek index windows its reads need
	// with it; reading the file again then fetches none.
	d2 := startDaemon(t, "")
	dev2 := d2.attach(&bddv1.AttachRequest{Layers: layers, ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE})
	if _, err := d2.Client.Prefetch(d2.ctx(), &bddv1.PrefetchRequest{Trace: tr.GetTrace()}); err != nil {
		t.Fatal(err)
	}
	if !d2.LogContains("seek index windows warmed") {
		t.Fatalf("the replay did not warm the seek index's windows:\n%s", d2.Logs())
	}
	seekGets := func() (n int) {
		for _, d := range reg.BlobGetDigests() {
			if d.String() == resp.GetLayers()[0].GetGzIndex().GetDigest() {
				n++
			}
		}
		return n
	}
	before := seekGets()
	mnt2 := mount(t, dev2.GetDevicePath(), true)
	if got, err := os.ReadFile(filepath.Join(mnt2, "d4/e1/f0004")); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after the replay: %d bytes, %v", len(got), err)
	}
	if n := seekGets() - before; n != 0 {
		t.Fatalf("reading the replayed file fetched the seek index %d times: its windows were not warmed", n)
	}
}

// TestFetchIndexRefusesForeignIndex: an index artifact of the image's manifest that indexes
// other layers than the image's is refused, not served.
func TestFetchIndexRefusesForeignIndex(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	img := pushTraceImage(t, reg, "plain/foreign")
	var layers []ociindex.Layer
	for _, l := range img.layers {
		src := ocispec.Descriptor{Digest: digest.FromString("not " + l.GetDigest()), Size: l.GetSize()}
		blob := func(mt string) ocispec.Descriptor {
			data := []byte(mt + src.Digest.String())
			return ocispec.Descriptor{MediaType: mt, Digest: reg.PushBlob(t, "plain/foreign", data), Size: int64(len(data))}
		}
		layers = append(layers, ociindex.Layer{Source: src, GzIndex: blob(ociindex.MediaTypeGzIndex), Meta: blob(ociindex.MediaTypeMeta), Map: blob(ociindex.MediaTypeMap)})
	}
	man, err := ociindex.BuildManifest(img.manifest, layers, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	artifact := ociartifact.Descriptor(ocispec.MediaTypeImageManifest, man)
	resolver := plainResolver()
	pusher, err := resolver.Pusher(ctx, img.ref)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []struct {
		d    ocispec.Descriptor
		data []byte
	}{{ociartifact.EmptyConfig(), ocispec.DescriptorEmptyJSON.Data}, {artifact, man}} {
		if err := ociartifact.PushBytes(ctx, pusher, reg.Host+"/plain/foreign", b.d, b.data); err != nil {
			t.Fatal(err)
		}
	}
	artifact.ArtifactType = ociindex.ArtifactType
	if _, err := ociartifact.Attach(ctx, resolver, reg.Host+"/plain/foreign", img.manifest.Digest, artifact); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "")
	_, err = d.Client.FetchIndex(d.ctx(), &bddv1.FetchIndexRequest{Ref: img.ref, ManifestDigest: img.manifest.Digest.String()})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "indexes") {
		t.Fatalf("FetchIndex of a foreign index: %v, want InvalidArgument naming the layer mismatch", err)
	}
}
