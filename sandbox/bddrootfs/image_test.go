package bddrootfs

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/obdimage"
	"github.com/obdproject/obd/ociartifact"
	"github.com/obdproject/obd/sandbox"
)

func TestIsImageRef(t *testing.T) {
	blob := "127.0.0.1:5000/app@sha256:" + strings.Repeat("ab", 32) + ":123"
	for ref, want := range map[string]bool{
		"127.0.0.1:5000/app:obd": true,
		"registry.example.com/team/app@sha256:" + strings.Repeat("ab", 32): true,
		"python3": true, // docker.io/library/python3: resolved, not a path
		blob:      false,
		"/l0":     false,
		"/l0,/l1": false,
		"":        false,
	} {
		if got := isImageRef(ref); got != want {
			t.Errorf("isImageRef(%q) = %v, want %v", ref, got, want)
		}
	}
	p := &Provider{MountDir: t.TempDir()}
	if _, _, err := p.Acquire(context.Background(), "127.0.0.1:5000/app:obd"); !errors.Is(err, sandbox.ErrBadImage) {
		t.Errorf("an image reference without a resolver: err = %v, want ErrBadImage", err)
	}
}

// TestSandboxOnRegistryImage: a function names an obd image by reference. The image and its
// start trace were pushed by `obd convert --record-trace` to a real registry; obd-lambda's
// provider resolves the reference, attaches the image's blobs lazily through a bdd with an
// empty cache, replays the registry's start trace, and the handler runs on it. A plain OCI
// image and a missing tag are refused at registration.
func TestSandboxOnRegistryImage(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: converts the python image into a registry and runs sandboxes on it")
	}
	reg := testregistry.Start(t, testregistry.Options{})
	ref := reg.Host + "/obdtest/python:obd"
	testenv.ConvertPythonImage(t, testenv.StartBDD(t), ref)

	ctx := context.Background()
	resolvers, err := convert.RegistryOptions{}.Resolvers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b := testenv.StartBDD(t) // a node that never read the image
	mounts := t.TempDir()
	p := &Provider{Client: b.Client, MountDir: mounts, Resolver: resolvers()}
	m, err := sandbox.NewManager(sandbox.Config{StateDir: t.TempDir(), Rootfs: p, PoolSize: 2, KeepAlive: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	code := t.TempDir()
	os.Chmod(code, 0o755)
	os.WriteFile(filepath.Join(code, "main.py"), []byte("import sqlite3\ndef handler(e):\n    return {'sqlite': sqlite3.sqlite_version}\n"), 0o644)
	if err := m.Register(ctx, sandbox.Function{Name: "f", Image: ref, Entry: "main.handler", Dir: code}); err != nil {
		t.Fatal(err)
	}
	res, err := m.Invoke(ctx, "f", json.RawMessage(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]string
	if json.Unmarshal(res.Output, &out); !strings.HasPrefix(out["sqlite"], "3.") {
		t.Fatalf("handler on the registry image returned %s", res.Output)
	}
	list, err := b.Client.List(ctx, &bddv1.ListRequest{})
	if err != nil || len(list.GetDevices()) != 1 {
		t.Fatalf("bdd devices = %v, %v; want the image attached once", list.GetDevices(), err)
	}
	blob := list.GetDevices()[0].GetLayers()[0].GetBlob()
	if blob.GetRef() != reg.Host+"/obdtest/python" || blob.GetRangeTable() == "" {
		t.Errorf("attached layer %v: want a blob of the image's repository pinned to its range table", blob)
	}
	deadline := time.Now().Add(time.Minute)
	for p.Replays().Prefetched == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if r := p.Replays(); r.Found != 1 || r.Prefetched != 1 || r.Warmed != 1 {
		t.Errorf("replays = %+v, want the registry's start trace found, prefetched and its pages read in", r)
	}
	stats, err := b.Client.Stats(ctx, &bddv1.StatsRequest{Id: list.GetDevices()[0].GetId()})
	if err != nil || stats.GetLayers()[0].GetBytesFetched() == 0 {
		t.Errorf("device stats = %v, %v; want bytes fetched from the registry", stats, err)
	}

	// A plain OCI image, and a tag the registry does not have.
	plain := reg.Host + "/obdtest/plain:v1"
	pushPlainImage(ctx, t, resolvers(), plain)
	for _, bad := range []struct{ ref, want string }{{plain, "not an overlaybd layer"}, {reg.Host + "/obdtest/python:missing", "not found"}} {
		err := m.Register(ctx, sandbox.Function{Name: "bad", Image: bad.ref, Entry: "main.handler", Dir: code})
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("register on %s: err = %v, want %q", bad.ref, err, bad.want)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if list, err := b.Client.List(ctx, &bddv1.ListRequest{}); err != nil || len(list.GetDevices()) != 0 {
		t.Errorf("bdd devices after Close = %v, %v; want none", list.GetDevices(), err)
	}
}

// pushPlainImage pushes a one-layer image whose layer is an ordinary tar blob to ref.
func pushPlainImage(ctx context.Context, t *testing.T, resolver remotes.Resolver, ref string) {
	t.Helper()
	repo, err := obdimage.Repository(ref)
	if err != nil {
		t.Fatal(err)
	}
	pusher, err := resolver.Pusher(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	push := func(mediaType string, data []byte) ocispec.Descriptor {
		d := ociartifact.Descriptor(mediaType, data)
		if err := ociartifact.PushBytes(ctx, pusher, repo, d, data); err != nil {
			t.Fatal(err)
		}
		return d
	}
	layer := push(ocispec.MediaTypeImageLayer, make([]byte, 1024)) // an empty tar
	config, _ := json.Marshal(ocispec.Image{Platform: ocispec.Platform{Architecture: "amd64", OS: "linux"}, RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layer.Digest}}})
	manifest, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: push(ocispec.MediaTypeImageConfig, config), Layers: []ocispec.Descriptor{layer}})
	push(ocispec.MediaTypeImageManifest, manifest)
}
