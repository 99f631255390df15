package traceartifact

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/remotes"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/internal/faultproxy"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"

	"github.com/obdproject/obd/ociartifact"
)

// list adds desc to the referrers tag of img's manifest, as a registry's referrers list
// would show it: the way a hostile or broken registry (or pusher) lists what it likes.
func list(t *testing.T, resolver remotes.Resolver, img testImage, desc ocispec.Descriptor) {
	t.Helper()
	repo, err := repository(img.ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ociartifact.AddToReferrersTag(context.Background(), resolver, repo, img.Manifest.Digest, desc); err != nil {
		t.Fatal(err)
	}
}

// asStartTrace returns d as a referrers list shows a start trace.
func asStartTrace(d ocispec.Descriptor) ocispec.Descriptor {
	d.ArtifactType = ArtifactType
	d.Annotations = map[string]string{AnnotationTracedBytes: "16384"}
	return d
}

func TestFetchRejectsListedNonTraces(t *testing.T) {
	r := testregistry.Start(t, testregistry.Options{})
	resolver := newResolver(r.Host, "", "")
	ctx := context.Background()
	img := pushImage(t, resolver, r.Host+"/app/hostile:1")

	for _, tc := range []struct {
		name string
		desc ocispec.Descriptor
		want error
	}{
		// The image's own manifest, listed as a start trace: an OCI manifest of another kind.
		{"image manifest", asStartTrace(img.Manifest), ErrBadArtifact},
		{"size over the cap", func() ocispec.Descriptor {
			d := asStartTrace(img.Manifest)
			d.Size = MaxManifestBytes + 1
			return d
		}(), ErrTooLarge},
		{"size short of the content", func() ocispec.Descriptor {
			d := asStartTrace(img.Manifest)
			d.Size--
			return d
		}(), ErrDigestMismatch},
		{"an index", func() ocispec.Descriptor {
			d := asStartTrace(img.Manifest)
			d.MediaType = ocispec.MediaTypeImageIndex
			return d
		}(), ErrBadArtifact},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Fetch(ctx, resolver, img.ref, img.Manifest.Digest, tc.desc); !errors.Is(err, tc.want) {
				t.Errorf("Fetch error = %v, want %v", err, tc.want)
			}
		})
	}

	// Listed, they make Select fail with the first candidate's error, never with a trace.
	list(t, resolver, img, asStartTrace(img.Manifest))
	if _, err := Select(ctx, resolver, img.ref, img.Image, math.MaxInt64); !errors.Is(err, ErrBadArtifact) {
		t.Errorf("Select over a listed image manifest: error = %v, want ErrBadArtifact", err)
	}
	// A good trace pushed later is chosen over it.
	good, err := Push(ctx, resolver, img.ref, img.Image, Trace{Blocks: blockTrace(t, img, 2, 4096)}, Info{})
	if err != nil {
		t.Fatal(err)
	}
	if sel, err := Select(ctx, resolver, img.ref, img.Image, math.MaxInt64); err != nil || sel.Descriptor.Digest != good.Descriptor.Digest {
		t.Errorf("Select = %s, %v; want %s", sel.Descriptor.Digest, err, good.Descriptor.Digest)
	}
}

func TestSelectRejectsForeignBlobs(t *testing.T) {
	r := testregistry.Start(t, testregistry.Options{})
	resolver := newResolver(r.Host, "", "")
	ctx := context.Background()
	img := pushImage(t, resolver, r.Host+"/app/foreign:1")
	other := pushImage(t, resolver, r.Host+"/app/other:1")

	// Push refuses a trace of another image's blobs...
	foreign := Trace{Blocks: blockTrace(t, other, 2, 4096)}
	if _, err := Push(ctx, resolver, img.ref, img.Image, foreign, Info{}); !errors.Is(err, ErrBadTrace) {
		t.Fatalf("Push of a trace of other blobs: error = %v, want ErrBadTrace", err)
	}
	// ...and Select refuses one another pusher attached.
	if _, err := Push(ctx, resolver, img.ref, Image{Manifest: img.Manifest, Layers: other.Layers}, foreign, Info{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Select(ctx, resolver, img.ref, img.Image, math.MaxInt64); !errors.Is(err, ErrBadTrace) {
		t.Errorf("Select of a trace of other blobs: error = %v, want ErrBadTrace", err)
	}

	// A range past the end of a blob of the right digest.
	var tr blocktrace.Trace
	l := img.Layers[0]
	tr.Blobs = []blocktrace.Blob{{Ref: img.ref, Digest: l.Digest, Size: l.Size + 1<<20,
		Ranges: []blocktrace.Range{{Off: l.Size, Len: 1 << 20, First: 1}}}}
	blocks, err := tr.Encode()
	if err != nil {
		t.Fatal(err)
	}
	grown := Image{Manifest: img.Manifest, Layers: []ocispec.Descriptor{{Digest: l.Digest, Size: l.Size + 1<<20}}}
	if _, err := Push(ctx, resolver, img.ref, grown, Trace{Blocks: blocks}, Info{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Select(ctx, resolver, img.ref, img.Image, math.MaxInt64); !errors.Is(err, ErrBadTrace) {
		t.Errorf("Select of a trace past a blob's end: error = %v, want ErrBadTrace", err)
	}
	// Layers of unknown size (0) leave the sizes to the caller: the same trace is selected.
	unknown := Image{Manifest: img.Manifest, Layers: []ocispec.Descriptor{{Digest: l.Digest}, {Digest: img.Layers[1].Digest}}}
	if sel, err := Select(ctx, resolver, img.ref, unknown, math.MaxInt64); err != nil || sel.Summary.Bytes != 1<<20 {
		t.Errorf("Select with sizes unknown: %+v, %v; want the newest trace, of 1 MiB", sel.Summary, err)
	}
}

func TestPushRefuses(t *testing.T) {
	r := testregistry.Start(t, testregistry.Options{})
	resolver := newResolver(r.Host, "", "")
	ctx := context.Background()
	img := pushImage(t, resolver, r.Host+"/app/refuse:1")
	blocks := blockTrace(t, img, 2, 4096)
	empty, err := blocktrace.Trace{}.Encode() // what a recording that read nothing returns
	if err != nil {
		t.Fatal(err)
	}

	index := img.Image
	index.Manifest.MediaType = ocispec.MediaTypeImageIndex
	for _, tc := range []struct {
		name  string
		img   Image
		trace Trace
		want  error
	}{
		{"empty trace", img.Image, Trace{Blocks: empty}, ErrImplausibleTrace},
		{"tiny trace", img.Image, Trace{Blocks: blockTrace(t, img, 1, 512)}, ErrImplausibleTrace},
		{"garbage block trace", img.Image, Trace{Blocks: []byte("{")}, ErrBadTrace},
		{"garbage page trace", img.Image, Trace{Blocks: blocks, Pages: []byte("not a page trace")}, ErrBadTrace},
		{"index subject", index, Trace{Blocks: blocks}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Push(ctx, resolver, img.ref, tc.img, tc.trace, Info{})
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Errorf("Push error = %v, want %v", err, tc.want)
			}
		})
	}
	if listed, err := List(ctx, resolver, img.ref, img.Manifest.Digest); err != nil || len(listed) != 0 {
		t.Errorf("after refused pushes List = %v, %v; want nothing", listed, err)
	}

	// A referrers tag that is not an index is not overwritten.
	man, err := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.DescriptorEmptyJSON, Layers: img.Layers})
	if err != nil {
		t.Fatal(err)
	}
	r.PushBlob(t, "app/refuse", ocispec.DescriptorEmptyJSON.Data)
	r.PushManifest(t, "app/refuse", ReferrersTag(img.Manifest.Digest), ocispec.MediaTypeImageManifest, man)
	if _, err := Push(ctx, resolver, img.ref, img.Image, Trace{Blocks: blocks}, Info{}); !errors.Is(err, ErrBadIndex) {
		t.Errorf("Push over a referrers tag holding a manifest: error = %v, want ErrBadIndex", err)
	}
}

func TestTooManyReferrers(t *testing.T) {
	// docker-registry checks that an index's manifests exist; one listed 4097 times does.
	host := testenv.StartDockerRegistry(t)
	resolver := newResolver(host, "", "")
	ctx := context.Background()
	img := pushImage(t, resolver, host+"/app/crowded:1")
	good, err := Push(ctx, resolver, img.ref, img.Image, Trace{Blocks: blockTrace(t, img, 2, 4096)}, Info{})
	if err != nil {
		t.Fatal(err)
	}
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}
	idx.SchemaVersion = 2
	for range MaxReferrers + 1 {
		idx.Manifests = append(idx.Manifests, good.Descriptor)
	}
	data, err := json.Marshal(idx)
	if err != nil {
		t.Fatal(err)
	}
	tagRef := host + "/app/crowded:" + ReferrersTag(img.Manifest.Digest)
	pusher, err := resolver.Pusher(ctx, tagRef)
	if err != nil {
		t.Fatal(err)
	}
	mustPush(t, pusher, tagRef, blobDescriptor(ocispec.MediaTypeImageIndex, data), data)

	if _, err := List(ctx, resolver, img.ref, img.Manifest.Digest); !errors.Is(err, ErrTooManyReferrers) {
		t.Errorf("List error = %v, want ErrTooManyReferrers", err)
	}
	if _, err := Select(ctx, resolver, img.ref, img.Image, math.MaxInt64); !errors.Is(err, ErrTooManyReferrers) {
		t.Errorf("Select error = %v, want ErrTooManyReferrers", err)
	}
}

func TestFetchDetectsCorruption(t *testing.T) {
	r := testregistry.Start(t, testregistry.Options{})
	proxy, err := faultproxy.New(r.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	resolver := newResolver(proxy.Host, "", "")
	ctx := context.Background()
	img := pushImage(t, resolver, proxy.Host+"/app/corrupt:1")
	trace := Trace{Blocks: blockTrace(t, img, 2, 4096), Pages: pageTrace()}
	pushed, err := Push(ctx, resolver, img.ref, img.Image, trace, Info{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		blob []byte
	}{{"block trace", trace.Blocks}, {"page trace", trace.Pages}} {
		t.Run(tc.name, func(t *testing.T) {
			path := "/blobs/" + blobDescriptor("", tc.blob).Digest.String()
			proxy.SetFilter(func(req *http.Request) bool {
				return req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, path)
			})
			proxy.InjectNext(faultproxy.Corrupt, 1)
			if _, err := Fetch(ctx, resolver, img.ref, img.Manifest.Digest, pushed.Descriptor); !errors.Is(err, ErrDigestMismatch) {
				t.Errorf("Fetch of a corrupted %s: error = %v, want ErrDigestMismatch", tc.name, err)
			}
			if proxy.Injected() == 0 {
				t.Fatal("the proxy corrupted nothing")
			}
		})
	}
}
