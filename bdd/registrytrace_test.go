package bdd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/traceartifact"
)

// traceImage is an image pushed for FetchTrace: its manifest and layers, as the API names them.
type traceImage struct {
	ref      string
	manifest ocispec.Descriptor
	layers   []*bddv1.RemoteBlob
}

func plainResolver() remotes.Resolver {
	return docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchAllHosts)),
	})
}

// pushTraceImage pushes an image of two layers of patterned bytes to reg.
func pushTraceImage(t *testing.T, reg *testregistry.Registry, repo string) traceImage {
	t.Helper()
	img := traceImage{ref: reg.Host + "/" + repo + ":v1"}
	var descs []ocispec.Descriptor
	for i, size := range []int{256 << 10, 64 << 10} {
		data := bytes.Repeat([]byte{byte(i + 1), 2, 3, 4, 5, 6, 7, byte(i)}, size/8)
		d := reg.PushBlob(t, repo, data)
		descs = append(descs, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: d, Size: int64(size)})
		img.layers = append(img.layers, &bddv1.RemoteBlob{Ref: reg.Host + "/" + repo, Digest: d.String(), Size: int64(size)})
	}
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	cfgDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: reg.PushBlob(t, repo, cfg), Size: int64(len(cfg))}
	man, err := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest, Config: cfgDesc, Layers: descs})
	if err != nil {
		t.Fatal(err)
	}
	d := reg.PushManifest(t, repo, "v1", ocispec.MediaTypeImageManifest, man)
	img.manifest = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: int64(len(man))}
	return img
}

// pushTrace pushes a start trace of img reading ranges of its first layer.
func pushTrace(t *testing.T, img traceImage, ranges ...blocktrace.Range) []byte {
	t.Helper()
	l := img.layers[0]
	trace, err := blocktrace.Trace{Blobs: []blocktrace.Blob{{Ref: l.Ref, Digest: digest.Digest(l.Digest), Size: l.Size, Ranges: ranges}}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	var layers []ocispec.Descriptor
	for _, l := range img.layers {
		layers = append(layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.Digest(l.Digest), Size: l.Size})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = traceartifact.Push(ctx, plainResolver(), img.ref, traceartifact.Image{Manifest: img.manifest, Layers: layers},
		traceartifact.Trace{Blocks: trace}, traceartifact.Info{Created: time.Now(), Recorder: "bdd test"})
	if err != nil {
		t.Fatal(err)
	}
	return trace
}

// freeAddr returns a loopback host:port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", url, resp.Status, err)
	}
	return string(body)
}

func (img traceImage) request() *bddv1.FetchTraceRequest {
	return &bddv1.FetchTraceRequest{Ref: img.ref, ManifestDigest: img.manifest.Digest.String(), Layers: img.layers}
}

// TestFetchTrace: bdd finds the start trace pushed for an image in a registry without the
// referrers API (the tag schema), answers found=false for an image without one, and counts
// both in its metrics.
func TestFetchTrace(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	traced := pushTraceImage(t, reg, "obd/traced")
	untraced := pushTraceImage(t, reg, "obd/untraced")
	pushTrace(t, traced, blocktrace.Range{Off: 0, Len: 64 << 10, First: 1}, blocktrace.Range{Off: 128 << 10, Len: 16 << 10, First: 2})
	metricsAddr := freeAddr(t)
	d := startDaemon(t, fmt.Sprintf("metrics_addr = %q", metricsAddr))

	resp, err := d.Client.FetchTrace(d.ctx(), traced.request())
	if err != nil {
		t.Fatalf("FetchTrace: %v\n%s", err, d.Logs())
	}
	if !resp.GetFound() || resp.GetArtifactDigest() == "" {
		t.Fatalf("FetchTrace of a traced image: %+v", resp)
	}
	got, err := blocktrace.Decode(resp.GetTrace())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Blobs) != 1 || got.Blobs[0].Digest.String() != traced.layers[0].Digest || len(got.Blobs[0].Ranges) != 2 {
		t.Fatalf("trace %+v: want the pushed ranges of layer 0", got)
	}
	unsized := traced.request()
	unsized.Layers = nil
	for _, l := range traced.layers {
		unsized.Layers = append(unsized.Layers, &bddv1.RemoteBlob{Ref: l.Ref, Digest: l.Digest})
	}
	if again, err := d.Client.FetchTrace(d.ctx(), unsized); err != nil || !bytes.Equal(again.GetTrace(), resp.GetTrace()) {
		t.Fatalf("FetchTrace with the layers' sizes unknown: %v; want the same trace", err)
	}
	if _, err := d.Client.Prefetch(d.ctx(), &bddv1.PrefetchRequest{Trace: resp.GetTrace()}); err != nil {
		t.Fatalf("the fetched trace does not replay: %v", err)
	}

	resp, err = d.Client.FetchTrace(d.ctx(), untraced.request())
	if err != nil || resp.GetFound() {
		t.Fatalf("FetchTrace of an untraced image: %+v, %v; want found=false", resp, err)
	}
	metrics := get(t, "http://"+metricsAddr+"/metrics")
	for _, want := range []string{`obd_bdd_registry_traces_total{result="found"} 2`, `obd_bdd_registry_traces_total{result="none"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestFetchTraceRefuses: requests that name no image, and traces that name ranges outside
// their blobs, are refused with InvalidArgument and a message saying what was wrong.
func TestFetchTraceRefuses(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	img := pushTraceImage(t, reg, "obd/hostile")
	d := startDaemon(t, "")

	noLayers := img.request()
	noLayers.Layers = nil
	badDigest := img.request()
	badDigest.ManifestDigest = "sha256:nothex"
	negative := img.request()
	negative.MaxBytes = -1
	for name, req := range map[string]*bddv1.FetchTraceRequest{"no layers": noLayers, "bad digest": badDigest, "negative budget": negative} {
		_, err := d.Client.FetchTrace(d.ctx(), req)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}

	// The registry holds a trace for the image; the request names a smaller first layer,
	// so the trace's ranges fall outside it.
	pushTrace(t, img, blocktrace.Range{Off: 128 << 10, Len: 64 << 10, First: 1})
	shrunk := img.request()
	shrunk.Layers = []*bddv1.RemoteBlob{{Ref: img.layers[0].Ref, Digest: img.layers[0].Digest, Size: 64 << 10}, img.layers[1]}
	_, err := d.Client.FetchTrace(d.ctx(), shrunk)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a trace outside its blob: %v, want InvalidArgument", err)
	}
	if !d.LogContains("registry trace refused") {
		t.Errorf("bdd did not log the refusal:\n%s", d.Logs())
	}
}
