package mirrorwarm

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/internal/testzone"
)

// layerBytes are 1 MiB of a layer's own bytes.
func layerBytes(i int) []byte {
	return bytes.Repeat(fmt.Appendf(nil, "layer %08d ", i), 1<<20/15)
}

// warmZone is a zone whose mirror notifies a Warmer.
func warmZone(t *testing.T, opts Options) (*testzone.Zone, *Warmer) {
	t.Helper()
	var handler atomic.Pointer[Warmer]
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if wm := handler.Load(); wm != nil {
			wm.ServeHTTP(w, r)
			return
		}
		http.Error(w, "not yet", http.StatusServiceUnavailable)
	}))
	t.Cleanup(hook.Close)
	z := testzone.Start(t, testzone.Options{Notify: []string{hook.URL + "/events"}})
	opts.Mirror, opts.DockerConfig = z.Mirror.Host, z.MirrorConfig(t)
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	w, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	handler.Store(w)
	return z, w
}

// pullManifest GETs the image's manifest through the mirror, as a node's containerd does.
func pullManifest(t *testing.T, z *testzone.Zone, repo, tag string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, z.MirrorLink.URL+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest)
	req.SetBasicAuth(testzone.ZoneUser, testzone.ZonePassword)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("manifest GET through the mirror: %s", resp.Status)
	}
}

// TestWarmOnManifestPull: a node's manifest GET through the mirror makes the warmer read the
// image's layers through it, the traced ones first in first-read order; afterwards the mirror
// serves ranges of every layer without the origin, and a second pull warms nothing again.
func TestWarmOnManifestPull(t *testing.T) {
	z, w := warmZone(t, Options{Concurrency: 1})
	layers := [][]byte{layerBytes(1), layerBytes(2), layerBytes(3), layerBytes(4)}
	img := z.PushImage(t, "obd/app", "v1", layers, nil)
	// The start read layer 2, then layer 0; layers 1 and 3 not at all.
	z.PushTrace(t, img, blocktrace.Trace{Blobs: []blocktrace.Blob{
		{Ref: z.Ref("obd/app"), Digest: img.Layers[0].Digest, Size: img.Layers[0].Size, Ranges: []blocktrace.Range{{Off: 0, Len: 8192, First: 2}}},
		{Ref: z.Ref("obd/app"), Digest: img.Layers[2].Digest, Size: img.Layers[2].Size, Ranges: []blocktrace.Range{{Off: 4096, Len: 8192, First: 1}}},
	}})
	before := len(z.Origin.BlobGetDigests())

	pullManifest(t, z, "obd/app", "v1")
	for deadline := time.Now().Add(30 * time.Second); w.Stats().Blobs < int64(len(layers)); {
		if time.Now().After(deadline) {
			t.Fatalf("warmer stats %+v: the image's %d layers were not warmed", w.Stats(), len(layers))
		}
		time.Sleep(10 * time.Millisecond)
	}
	var order []digest.Digest
	isLayer := func(d digest.Digest) bool {
		return slices.ContainsFunc(img.Layers, func(l ocispec.Descriptor) bool { return l.Digest == d })
	}
	for _, d := range z.Origin.BlobGetDigests()[before:] {
		if isLayer(d) && !slices.Contains(order, d) { // the trace artifact's blobs come first
			order = append(order, d)
		}
	}
	want := []digest.Digest{img.Layers[2].Digest, img.Layers[0].Digest, img.Layers[1].Digest, img.Layers[3].Digest}
	if !slices.Equal(order, want) {
		t.Errorf("origin blob GET order %v, want traced layers first (%v)", order, want)
	}

	for deadline := time.Now().Add(10 * time.Second); ; {
		originGets := z.Origin.BlobGets()
		cached := 0
		for i, l := range img.Layers {
			req, _ := http.NewRequest(http.MethodGet, z.Mirror.URL+"/v2/obd/app/blobs/"+l.Digest.String(), nil)
			req.SetBasicAuth(testzone.ZoneUser, testzone.ZonePassword)
			req.Header.Set("Range", "bytes=100-199")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusPartialContent && bytes.Equal(body, layers[i][100:200]) {
				cached++
			}
		}
		if cached == len(layers) && z.Origin.BlobGets() == originGets {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after warming, the mirror serves %d of %d layers from its cache", cached, len(layers))
		}
		time.Sleep(20 * time.Millisecond)
	}

	images := w.Stats().Images
	pullManifest(t, z, "obd/app", "v1")
	time.Sleep(200 * time.Millisecond) // a second warming would start within this
	if got := w.Stats().Images; got != images {
		t.Errorf("a second pull within Remember warmed the image again (%d warmings)", got)
	}
}

// TestHostileNotifications: bad envelopes are refused; events that are not manifest pulls,
// or name bad digests, start nothing.
func TestHostileNotifications(t *testing.T) {
	w, err := New(Options{Mirror: "127.0.0.1:1", DockerConfig: filepath.Join(t.TempDir(), "none.json")})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, tc := range []struct {
		method, body string
		status       int
	}{
		{http.MethodGet, "", http.StatusMethodNotAllowed},
		{http.MethodPost, "{", http.StatusBadRequest},
		{http.MethodPost, strings.Repeat(" ", maxEnvelope+1) + "{}", http.StatusBadRequest},
		{http.MethodPost, `{"events":[{"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"a","digest":"sha256:` + strings.Repeat("0", 64) + `"}}]}`, http.StatusOK},
		{http.MethodPost, `{"events":[{"action":"pull","target":{"mediaType":"application/octet-stream","repository":"a","digest":"sha256:` + strings.Repeat("0", 64) + `"}}]}`, http.StatusOK},
		{http.MethodPost, `{"events":[{"action":"pull","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"a","digest":"sha256:zz"}}]}`, http.StatusOK},
	} {
		rec := httptest.NewRecorder()
		w.ServeHTTP(rec, httptest.NewRequest(tc.method, "/events", strings.NewReader(tc.body)))
		if rec.Code != tc.status {
			t.Errorf("%s %.40q: status %d, want %d", tc.method, tc.body, rec.Code, tc.status)
		}
	}
	if s := w.Stats(); s.Images != 0 || s.Errors != 0 {
		t.Errorf("stats %+v: hostile events started warmings", s)
	}
}

// TestOrder: traced layers first by first read, unknown first-read order after known ones,
// untraced layers last in manifest order.
func TestOrder(t *testing.T) {
	d := func(i int) ocispec.Descriptor { return ocispec.Descriptor{Digest: digest.FromString(fmt.Sprint(i))} }
	layers := []ocispec.Descriptor{d(0), d(1), d(2), d(3), d(4)}
	tr := blocktrace.Trace{Blobs: []blocktrace.Blob{
		{Digest: d(1).Digest, Ranges: []blocktrace.Range{{First: 0}}},
		{Digest: d(3).Digest, Ranges: []blocktrace.Range{{First: 9}, {First: 4}}},
		{Digest: d(4).Digest, Ranges: []blocktrace.Range{{First: 5}}},
		{Digest: digest.FromString("not a layer"), Ranges: []blocktrace.Range{{First: 1}}},
	}}
	got := Order(layers, tr)
	want := []ocispec.Descriptor{d(3), d(4), d(1), d(0), d(2)}
	for i := range want {
		if got[i].Digest != want[i].Digest {
			t.Fatalf("order %v, want %v", got, want)
		}
	}
}

// FuzzNotification: any request body is taken (200) or refused (400), never a panic; whatever
// it starts ends when the warmer closes.
func FuzzNotification(f *testing.F) {
	f.Add([]byte(`{"events":[{"action":"pull","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"a/b","digest":"sha256:` + strings.Repeat("ab", 32) + `"}}]}`))
	f.Add([]byte(`{"events":[{}]}`))
	f.Add([]byte(`[]`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, body []byte) {
		w, err := New(Options{Mirror: "127.0.0.1:1", DockerConfig: filepath.Join(dir, "none.json"), Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		rec := httptest.NewRecorder()
		w.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/events", bytes.NewReader(body)))
		if rec.Code != http.StatusOK && rec.Code != http.StatusBadRequest {
			t.Fatalf("status %d", rec.Code)
		}
	})
}
