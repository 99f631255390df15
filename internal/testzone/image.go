package testzone

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/traceartifact"
)

// Image is an image pushed to the origin.
type Image struct {
	Repo, Tag string
	traceartifact.Image
}

// PushImage pushes layers (blobs with the given annotations, e.g. overlaybd's), a config and a
// manifest tagged tag to repo on the origin.
func (z *Zone) PushImage(t testing.TB, repo, tag string, layers [][]byte, annotations []map[string]string) Image {
	t.Helper()
	img := Image{Repo: repo, Tag: tag}
	var diffIDs []digest.Digest
	for i, data := range layers {
		d := z.Origin.PushBlob(t, repo, data)
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: d, Size: int64(len(data))}
		if i < len(annotations) {
			desc.Annotations = annotations[i]
		}
		img.Layers = append(img.Layers, desc)
		diffIDs = append(diffIDs, d)
	}
	cfg, err := json.Marshal(ocispec.Image{Platform: ocispec.Platform{Architecture: "amd64", OS: "linux"},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: diffIDs}})
	if err != nil {
		t.Fatal(err)
	}
	cd := z.Origin.PushBlob(t, repo, cfg)
	man, err := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: cd, Size: int64(len(cfg))}, Layers: img.Layers})
	if err != nil {
		t.Fatal(err)
	}
	md := z.Origin.PushManifest(t, repo, tag, ocispec.MediaTypeImageManifest, man)
	img.Manifest = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: md, Size: int64(len(man))}
	return img
}

// PushTrace stores tr as the image's start trace artifact on the origin.
func (z *Zone) PushTrace(t testing.TB, img Image, tr blocktrace.Trace) {
	t.Helper()
	blocks, err := tr.Encode()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := traceartifact.Push(ctx, z.OriginResolver(), z.Ref(img.Repo), img.Image, traceartifact.Trace{Blocks: blocks},
		traceartifact.Info{Recorder: "testzone"}); err != nil {
		t.Fatalf("testzone: push trace: %v", err)
	}
}

// OriginResolver is a containerd resolver that reaches the origin (through OriginLink) with
// the origin's credentials.
func (z *Zone) OriginResolver() remotes.Resolver {
	return docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(context.Background(), config.HostOptions{
		DefaultScheme: "http",
		Credentials: func(h string) (string, string, error) {
			if h == z.OriginLink.Host {
				return z.Origin.Username(), z.Origin.Password(), nil
			}
			return "", "", nil
		},
	})})
}
