package snapshotter

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/tracestore"
)

// encodedTrace is a trace of the first 4 KiB of layer l.
func encodedTrace(t *testing.T, l RemoteLayer) []byte {
	t.Helper()
	data, err := blocktrace.Trace{Blobs: []blocktrace.Blob{{Ref: l.Ref, Digest: l.Digest, Size: l.Size,
		Ranges: []blocktrace.Range{{Off: 0, Len: 4096, First: 1}}}}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// nextPrefetch waits for the next Prefetch to reach bdd.
func nextPrefetch(t *testing.T, bdd *loopBDD, what string) []byte {
	t.Helper()
	select {
	case got := <-bdd.prefetched:
		return got
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no Prefetch reached bdd within 30s", what)
		return nil
	}
}

// noPrefetch fails if a Prefetch reached bdd; callers have waited for the lookups first.
func noPrefetch(t *testing.T, bdd *loopBDD, what string) {
	t.Helper()
	select {
	case got := <-bdd.prefetched:
		t.Errorf("%s: unexpected Prefetch %q", what, got)
	default:
	}
}

// TestBDDDevicesPrefetchRegistryTrace: a chain without a local trace replays the registry's
// (through bdd's FetchTrace), looked up once per chain however often it attaches; a miss is
// remembered too; a local trace wins without asking the registry; a chain whose pull did not
// name its manifest is not looked up.
func TestBDDDevicesPrefetchRegistryTrace(t *testing.T) {
	ctx := context.Background()
	devices := newLoopDevices(t)
	bdd, client := startLoopBDD(t, devices)
	traceDir := filepath.Join(t.TempDir(), "traces")
	remote := NewRemoteTraces(client, nil)
	manager, err := NewBDDDevices(client, filepath.Join(t.TempDir(), "devices"), WithTracePrefetch(traceDir), WithRemoteTracePrefetch(remote))
	if err != nil {
		t.Fatal(err)
	}
	layer := func(name string, manifest digest.Digest) RemoteLayer {
		l := devices.addBlob(map[string]string{name: name})
		l.Manifest = manifest
		return l
	}
	tracedManifest, untracedManifest, localManifest := digest.FromString("traced"), digest.FromString("untraced"), digest.FromString("local")
	traced := []RemoteLayer{layer("a", tracedManifest)}
	untraced := []RemoteLayer{layer("b", untracedManifest)}
	local := []RemoteLayer{layer("c", localManifest)}
	unnamed := []RemoteLayer{layer("d", "")}

	registryTrace := encodedTrace(t, traced[0])
	bdd.registry[tracedManifest.String()] = registryTrace
	bdd.registry[localManifest.String()] = encodedTrace(t, local[0])
	localTrace := append(encodedTrace(t, local[0]), '\n')
	chain, err := chainID(local)
	if err != nil {
		t.Fatal(err)
	}
	if err := (tracestore.Store{Dir: traceDir}).Save(chain, localTrace); err != nil {
		t.Fatal(err)
	}

	attach := func(key string, layers []RemoteLayer) {
		t.Helper()
		if _, err := manager.Attach(ctx, key, layers, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { manager.Detach(ctx, key) })
	}
	attach("traced-1", traced)
	if got := nextPrefetch(t, bdd, "the registry's trace"); !bytes.Equal(got, registryTrace) {
		t.Errorf("prefetched %q, want the registry's %q", got, registryTrace)
	}
	attach("traced-2", traced)
	if got := nextPrefetch(t, bdd, "the registry's trace again"); !bytes.Equal(got, registryTrace) {
		t.Errorf("second device prefetched %q, want the registry's %q", got, registryTrace)
	}
	if n := bdd.fetchTraceCalls(tracedManifest); n != 1 {
		t.Errorf("the traced chain was looked up %d times, want once", n)
	}

	attach("local", local)
	if got := nextPrefetch(t, bdd, "the local trace"); !bytes.Equal(got, localTrace) {
		t.Errorf("prefetched %q, want the local trace", got)
	}
	if n := bdd.fetchTraceCalls(localManifest); n != 0 {
		t.Errorf("a chain with a local trace was looked up in the registry %d times", n)
	}

	attach("untraced-1", untraced)
	attach("untraced-2", untraced)
	attach("unnamed", unnamed)
	for _, layers := range [][]RemoteLayer{untraced, unnamed} {
		waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, _, err := remote.Trace(waitCtx, layers)
		cancel()
		if !errors.Is(err, ErrNoRemoteTrace) {
			t.Errorf("Trace of a chain without one: %v, want ErrNoRemoteTrace", err)
		}
	}
	if n := bdd.fetchTraceCalls(untracedManifest); n != 1 {
		t.Errorf("the untraced chain was looked up %d times, want once (the miss is kept)", n)
	}
	if n := bdd.fetchTraceCalls(""); n != 0 {
		t.Errorf("a chain without a manifest was looked up %d times", n)
	}
	noPrefetch(t, bdd, "chains without a trace")
}

// TestLayerLabelsCarryTheManifest: the manifest digest a pull labels layers with reaches the
// layer record; a malformed one is refused.
func TestLayerLabelsCarryTheManifest(t *testing.T) {
	manifest := digest.FromString("manifest")
	labels := map[string]string{
		imagelabels.BlobDigest: digest.FromString("blob").String(), imagelabels.BlobSize: "4096",
		imagelabels.CRIImageRef: "registry.local/app:v1", imagelabels.CRIManifestDigest: manifest.String(),
	}
	layer, ok, err := remoteLayerFromLabels(labels)
	if err != nil || !ok || layer.Manifest != manifest {
		t.Fatalf("remoteLayerFromLabels = %+v, %v, %v; want manifest %s", layer, ok, err, manifest)
	}
	path := filepath.Join(t.TempDir(), "layer.json")
	if err := writeLayerRecord(path, layer); err != nil {
		t.Fatal(err)
	}
	if got, _, err := readLayerRecord(path); err != nil || got != layer {
		t.Fatalf("layer record round trip: %+v, %v; want %+v", got, err, layer)
	}
	labels[imagelabels.CRIManifestDigest] = "sha256:short"
	if _, _, err := remoteLayerFromLabels(labels); !errors.Is(err, ErrBadLayerLabels) {
		t.Fatalf("a malformed manifest label: %v, want ErrBadLayerLabels", err)
	}
}

// TestRemoteTracesLookAhead: a lookup started from a pull's labels, before the layers' sizes
// are known, serves the attach that follows without a second FetchTrace; a trace whose sizes
// do not match the layers' is refused then.
func TestRemoteTracesLookAhead(t *testing.T) {
	devices := newLoopDevices(t)
	bdd, client := startLoopBDD(t, devices)
	remote := NewRemoteTraces(client, nil)
	honest := devices.addBlob(map[string]string{"a": "1"})
	honest.Manifest = digest.FromString("honest")
	lying := devices.addBlob(map[string]string{"b": "2"})
	lying.Manifest = digest.FromString("lying")
	bdd.registry[honest.Manifest.String()] = encodedTrace(t, honest)
	grown := lying
	grown.Size += 4096
	bdd.registry[lying.Manifest.String()] = encodedTrace(t, grown)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, l := range []RemoteLayer{honest, lying} {
		remote.LookAhead(l.Ref, l.Manifest, []digest.Digest{l.Digest})
	}
	got, _, err := remote.Trace(ctx, []RemoteLayer{honest})
	if err != nil || !bytes.Equal(got, encodedTrace(t, honest)) {
		t.Fatalf("Trace after a lookup ahead: %q, %v; want the registry's trace", got, err)
	}
	if _, _, err := remote.Trace(ctx, []RemoteLayer{lying}); err == nil || !strings.Contains(err.Error(), "size") {
		t.Fatalf("Trace of a trace with another size: %v, want it refused for its size", err)
	}
	for _, l := range []RemoteLayer{honest, lying} {
		if n := bdd.fetchTraceCalls(l.Manifest); n != 1 {
			t.Errorf("chain %s looked up %d times, want once", l.Digest, n)
		}
	}
}
