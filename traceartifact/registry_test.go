package traceartifact

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/pagetrace"

	"github.com/obdproject/obd/ociartifact"
)

// registryKind starts one kind of real registry and returns its host and whether it serves the
// referrers API.
type registryKind struct {
	name      string
	referrers bool
	start     func(t *testing.T) (host string, resolver remotes.Resolver)
}

var registryKinds = []registryKind{
	{"distribution-v3", false, func(t *testing.T) (string, remotes.Resolver) {
		r := testregistry.Start(t, testregistry.Options{})
		return r.Host, newResolver(r.Host, "", "")
	}},
	{"distribution-v3-token-auth", false, func(t *testing.T) (string, remotes.Resolver) {
		r := testregistry.Start(t, testregistry.Options{Auth: testregistry.AuthToken})
		return r.Host, newResolver(r.Host, r.Username(), r.Password())
	}},
	{"docker-registry-2.8", false, func(t *testing.T) (string, remotes.Resolver) {
		host := testenv.StartDockerRegistry(t)
		return host, newResolver(host, "", "")
	}},
	{"go-containerregistry", true, func(t *testing.T) (string, remotes.Resolver) {
		srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.WithReferrersSupport(true), ggcrregistry.Logger(log.New(io.Discard, "", 0))))
		t.Cleanup(srv.Close)
		host := strings.TrimPrefix(srv.URL, "http://")
		return host, newResolver(host, "", "")
	}},
}

// newResolver is containerd's docker resolver for a plain-HTTP registry at host, with basic
// credentials when user is set (also what a token endpoint asks for).
func newResolver(host, user, password string) remotes.Resolver {
	return docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(context.Background(), config.HostOptions{
		DefaultScheme: "http",
		Credentials: func(h string) (string, string, error) {
			if h == host {
				return user, password, nil
			}
			return "", "", nil
		},
	})})
}

// testImage is an image in a registry.
type testImage struct {
	ref string
	Image
}

// pushImage pushes an image with two layers of random-looking bytes and a config.
func pushImage(t *testing.T, resolver remotes.Resolver, ref string) testImage {
	t.Helper()
	ctx := context.Background()
	pusher, err := resolver.Pusher(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	img := testImage{ref: ref}
	for i, size := range []int{96 << 10, 40 << 10} {
		data := bytes.Repeat([]byte(fmt.Sprintf("layer %d of %s ", i, ref)), size/16)
		d := blobDescriptor(ocispec.MediaTypeImageLayer, data)
		mustPush(t, pusher, ref, d, data)
		img.Layers = append(img.Layers, d)
	}
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	cfgDesc := blobDescriptor(ocispec.MediaTypeImageConfig, cfg)
	mustPush(t, pusher, ref, cfgDesc, cfg)
	man, err := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cfgDesc, Layers: img.Layers})
	if err != nil {
		t.Fatal(err)
	}
	img.Manifest = blobDescriptor(ocispec.MediaTypeImageManifest, man)
	mustPush(t, pusher, ref, img.Manifest, man)
	return img
}

func mustPush(t *testing.T, pusher remotes.Pusher, ref string, d ocispec.Descriptor, data []byte) {
	t.Helper()
	if err := ociartifact.PushBytes(context.Background(), pusher, ref, d, data); err != nil {
		t.Fatal(err)
	}
}

// blockTrace encodes a block trace of img's layers, n ranges of length each in every layer.
func blockTrace(t *testing.T, img testImage, n int, length int64) []byte {
	t.Helper()
	var tr blocktrace.Trace
	first := int64(1)
	for _, l := range img.Layers {
		b := blocktrace.Blob{Ref: "elsewhere.example/other/name:tag", Digest: l.Digest, Size: l.Size}
		for i := range n {
			b.Ranges = append(b.Ranges, blocktrace.Range{Off: int64(i) * 2 * length, Len: length, First: first})
			first++
		}
		tr.Blobs = append(tr.Blobs, b)
	}
	blocks, err := tr.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return blocks
}

func pageTrace() []byte {
	return pagetrace.Trace{{Path: "usr/bin/python3", Off: 0, Len: 8192}, {Path: "etc/ld.so.cache", Off: 0, Len: 4096}}.Encode()
}

// resolveDigest returns the digest ref's tag points at.
func resolveDigest(t *testing.T, resolver remotes.Resolver, ref string) digest.Digest {
	t.Helper()
	_, d, err := resolver.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return d.Digest
}

func TestPushListFetchSelect(t *testing.T) {
	for _, kind := range registryKinds {
		t.Run(kind.name, func(t *testing.T) {
			host, resolver := kind.start(t)
			ctx := context.Background()
			img := pushImage(t, resolver, host+"/app/python:3")

			if got, err := List(ctx, resolver, img.ref, img.Manifest.Digest); err != nil || len(got) != 0 {
				t.Fatalf("List before any push = %v, %v; want none, no error", got, err)
			}

			small := Trace{Blocks: blockTrace(t, img, 2, 4096), Pages: pageTrace()} // 16 KiB traced
			first, err := Push(ctx, resolver, img.ref, img.Image, small, Info{
				Created: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Command: []string{"python3", "-c", "pass"}, Recorder: "test"})
			if err != nil {
				t.Fatal(err)
			}
			wantTag := ""
			if !kind.referrers {
				wantTag = "sha256-" + img.Manifest.Digest.Encoded()
			}
			if first.ReferrersTag != wantTag {
				t.Errorf("ReferrersTag = %q, want %q", first.ReferrersTag, wantTag)
			}
			if first.Summary.Bytes != 16<<10 || first.Descriptor.Annotations[AnnotationTracedBytes] != "16384" {
				t.Errorf("pushed %+v, annotations %v; want 16384 traced bytes", first.Summary, first.Descriptor.Annotations)
			}
			big := Trace{Blocks: blockTrace(t, img, 4, 8192)} // 64 KiB traced, no page trace
			second, err := Push(ctx, resolver, img.ref, img.Image, big, Info{Created: time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)})
			if err != nil {
				t.Fatal(err)
			}

			listed, err := List(ctx, resolver, img.ref, img.Manifest.Digest)
			if err != nil {
				t.Fatal(err)
			}
			if len(listed) != 2 || listed[0].Digest != second.Descriptor.Digest || listed[1].Digest != first.Descriptor.Digest {
				t.Fatalf("List = %v, want [%s %s] (newest first)", listed, second.Descriptor.Digest, first.Descriptor.Digest)
			}
			if listed[1].Annotations[AnnotationCommand] != `["python3","-c","pass"]` {
				t.Errorf("command annotation = %q", listed[1].Annotations[AnnotationCommand])
			}

			got, err := Fetch(ctx, resolver, img.ref, img.Manifest.Digest, listed[1])
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Blocks, small.Blocks) || !bytes.Equal(got.Pages, small.Pages) {
				t.Errorf("Fetch returned other traces than were pushed")
			}
			if got, err := Fetch(ctx, resolver, img.ref, img.Manifest.Digest, listed[0]); err != nil || got.Pages != nil {
				t.Errorf("Fetch of the trace without pages: pages %q, err %v", got.Pages, err)
			}

			// The newest fits an unlimited budget; under 64 KiB only the older one does.
			sel, err := Select(ctx, resolver, img.ref, img.Image, math.MaxInt64)
			if err != nil || sel.Descriptor.Digest != second.Descriptor.Digest {
				t.Fatalf("Select(no limit) = %v, %v; want %s", sel.Descriptor.Digest, err, second.Descriptor.Digest)
			}
			sel, err = Select(ctx, resolver, img.ref, img.Image, 32<<10)
			if err != nil || sel.Descriptor.Digest != first.Descriptor.Digest || !bytes.Equal(sel.Pages, small.Pages) {
				t.Fatalf("Select(32 KiB) = %v, %v; want %s", sel.Descriptor.Digest, err, first.Descriptor.Digest)
			}
			decoded, err := blocktrace.Decode(sel.Blocks)
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range decoded.Blobs {
				if b.Ref != host+"/app/python" {
					t.Errorf("selected trace names blob %s at %q, want the image's repository", b.Digest, b.Ref)
				}
			}
			if _, err := Select(ctx, resolver, img.ref, img.Image, 8<<10); !errors.Is(err, ErrNoTrace) {
				t.Errorf("Select(8 KiB) error = %v, want ErrNoTrace", err)
			}
			if _, err := Select(ctx, resolver, img.ref, Image{Manifest: img.Manifest, Layers: img.Layers[:1]}, math.MaxInt64); !errors.Is(err, ErrBadTrace) {
				t.Errorf("Select with a layer missing: error = %v, want ErrBadTrace", err)
			}

			// Pushing the same trace again adds nothing.
			if _, err := Push(ctx, resolver, img.ref, img.Image, big, Info{Created: time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)}); err != nil {
				t.Fatal(err)
			}
			if listed, err := List(ctx, resolver, img.ref, img.Manifest.Digest); err != nil || len(listed) != 2 {
				t.Errorf("after a repeated push List = %d traces, %v; want 2", len(listed), err)
			}
			if d := resolveDigest(t, resolver, img.ref); d != img.Manifest.Digest {
				t.Errorf("the image's tag moved to %s, want %s", d, img.Manifest.Digest)
			}
			if d := resolveDigest(t, resolver, host+"/app/python@"+img.Manifest.Digest.String()); d != img.Manifest.Digest {
				t.Errorf("the image's manifest is %s, want %s", d, img.Manifest.Digest)
			}
		})
	}
}
