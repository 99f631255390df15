package convert_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/convert/internal/fixture"
	"github.com/obdproject/obd/credentials"
	"github.com/obdproject/obd/gzindex"
	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/ociartifact"
	"github.com/obdproject/obd/ociindex"
	"github.com/obdproject/obd/remotefetch"
	"github.com/obdproject/obd/zfile"
)

// indexedLayers opens an indexed image's layers over the source layout's
// blobs, as bdd stacks them: metadata layer, then map, per source layer.
func indexedLayers(t *testing.T, src string, img convert.IndexedImage) []lsmt.Layer {
	t.Helper()
	var layers []lsmt.Layer
	for _, l := range img.Layers {
		var p ociindex.Parts
		gz, err := os.ReadFile(l.GzIndex)
		if err != nil {
			t.Fatal(err)
		}
		if table := gz[l.GzIndexTableOffset:]; digest.FromBytes(table) != l.GzIndexTable {
			t.Fatalf("seek index's range table is not %s", l.GzIndexTable)
		}
		p.GzIndex, p.GzIndexSize = bytes.NewReader(gz[:l.GzIndexTableOffset]), l.GzIndexTableOffset
		if p.Map, err = os.ReadFile(l.Map); err != nil {
			t.Fatal(err)
		}
		meta, err := os.Open(l.Meta)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { meta.Close() })
		fi, _ := meta.Stat()
		blob, err := os.Open(blobPath(src, l.Source.Digest.Encoded()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { blob.Close() })
		p.Meta, p.MetaSize, p.Blob, p.Name = meta, fi.Size(), blob, l.Source.Digest.String()
		ls, err := ociindex.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, ls...)
	}
	return layers
}

// TestIndexMatchesUmoci indexes the fixture image, stacks the metadata layers
// and maps over the unchanged gzip blobs, mounts the ext4 and compares the
// whole tree with `umoci unpack` of the source.
func TestIndexMatchesUmoci(t *testing.T) {
	requireDevices(t)
	umoci := fixture.Umoci(t)
	src := fixtureLayout(t)
	res := indexFixture(t, src)
	var mapped, meta int64
	for _, l := range res.Images[0].Layers {
		mapped += l.MappedBytes
		fi, err := os.Stat(l.Meta)
		if err != nil {
			t.Fatal(err)
		}
		meta += fi.Size()
	}
	if mapped == 0 {
		t.Fatal("no file data mapped to the tar streams")
	}
	t.Logf("blobs %d bytes, mapped %d, metadata layers %d", res.BlobBytes, mapped, meta)
	checkMatchesUmoci(t, umoci, src, mountLayers(t, indexedLayers(t, src, res.Images[0])))
}

// pushLayout copies the image tagged tag in an OCI layout to ref, unchanged.
func pushLayout(t *testing.T, resolver remotes.Resolver, dir, tag, ref string) ocispec.Descriptor {
	t.Helper()
	ctx := context.Background()
	var idx ocispec.Index
	readJSON(t, filepath.Join(dir, "index.json"), &idx)
	pusher, err := resolver.Pusher(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range idx.Manifests {
		if m.Annotations[ocispec.AnnotationRefName] != tag {
			continue
		}
		man := readManifest(t, dir, tag)
		for _, d := range append([]ocispec.Descriptor{man.Config}, man.Layers...) {
			b, err := os.ReadFile(blobPath(dir, d.Digest.Encoded()))
			if err != nil {
				t.Fatal(err)
			}
			if err := ociartifact.PushBytes(ctx, pusher, ref, d, b); err != nil {
				t.Fatal(err)
			}
		}
		b, err := os.ReadFile(blobPath(dir, m.Digest.Encoded()))
		if err != nil {
			t.Fatal(err)
		}
		d := ocispec.Descriptor{MediaType: m.MediaType, Digest: m.Digest, Size: m.Size}
		if err := ociartifact.PushBytes(ctx, pusher, ref, d, b); err != nil {
			t.Fatal(err)
		}
		return d
	}
	t.Fatalf("%s has no tag %s", dir, tag)
	return ocispec.Descriptor{}
}

// TestIndexPushedAndLazyRead pushes the fixture image to a registry with
// credentials, indexes it there, finds the index through the image's
// referrers, and mounts the image reading every blob lazily through
// remotefetch: the tree must be what umoci unpacks, and the image's manifest
// must not have changed.
func TestIndexPushedAndLazyRead(t *testing.T) {
	requireDevices(t)
	umoci := fixture.Umoci(t)
	tmp := t.TempDir()
	reg, cfgPath, c := registryConverter(t, tmp)
	src := fixtureLayout(t)
	ctx := context.Background()
	ref := reg.Host + "/fixture/plain:v1"
	creds, err := credentials.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(ctx, config.HostOptions{
		Credentials: func(host string) (string, string, error) { return creds.Get(ctx, host) }})})
	image := pushLayout(t, resolver, src, "v1", ref)

	res, err := c.Index(ctx, ref, convert.IndexOptions{Push: true})
	if err != nil {
		t.Fatal(err)
	}
	img := res.Images[0]
	if img.Manifest.Digest != image.Digest || img.ReferrersTag == "" {
		t.Fatalf("indexed %s (referrers tag %q), want %s through the referrers tag", img.Manifest.Digest, img.ReferrersTag, image.Digest)
	}
	if _, d, err := resolver.Resolve(ctx, ref); err != nil || d.Digest != image.Digest {
		t.Fatalf("after indexing the tag resolves to %s, %v; want it unchanged at %s", d.Digest, err, image.Digest)
	}

	listed, err := ociartifact.Referrers(ctx, resolver, reg.Host+"/fixture/plain", image.Digest)
	if err != nil || len(listed) != 1 || listed[0].ArtifactType != ociindex.ArtifactType {
		t.Fatalf("referrers %+v, %v: want the index artifact", listed, err)
	}
	fetcher, err := resolver.Fetcher(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	body, err := ociartifact.ReadVerified(ctx, fetcher, listed[0], ociindex.MaxManifestBytes)
	if err != nil {
		t.Fatal(err)
	}
	man := readManifest(t, src, "v1")
	layers, err := ociindex.ParseManifest(body, image.Digest, man.Layers)
	if err != nil {
		t.Fatal(err)
	}
	f, err := remotefetch.New(remotefetch.Options{CacheDir: filepath.Join(tmp, "cache"), DockerConfig: cfgPath, BackgroundDelay: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var stack []lsmt.Layer
	for _, l := range layers {
		// The seek index is read in pieces, each checked against its range table.
		xb, err := f.Open(ctx, ref, l.GzIndex.Digest, l.GzIndex.Size, remotefetch.WithRangeTable(l.GzIndexTable, l.GzIndexTableOffset))
		if err != nil {
			t.Fatal(err)
		}
		mb, err := ociartifact.ReadVerified(ctx, fetcher, l.Map, ociindex.MaxMapBytes)
		if err != nil {
			t.Fatal(err)
		}
		meta, err := f.Open(ctx, ref, l.Meta.Digest, l.Meta.Size)
		if err != nil {
			t.Fatal(err)
		}
		blob, err := f.Open(ctx, ref, l.Source.Digest, l.Source.Size)
		if err != nil {
			t.Fatal(err)
		}
		ls, err := ociindex.Open(ociindex.Parts{Meta: meta, MetaSize: l.Meta.Size, GzIndex: xb, GzIndexSize: l.GzIndexTableOffset, Map: mb, Blob: blob, Name: l.Source.Digest.String()})
		if err != nil {
			t.Fatal(err)
		}
		stack = append(stack, ls...)
	}
	checkMatchesUmoci(t, umoci, src, mountLayers(t, stack))
}

// TestIndexZstdMatchesUmoci is TestIndexMatchesUmoci for an image whose layers are
// zstd in frames of 4 KiB of tar (the seek index checkpoints at frame boundaries),
// against umoci's unpack of the same tars gzipped (umoci reads no zstd).
func TestIndexZstdMatchesUmoci(t *testing.T) {
	requireDevices(t)
	umoci := fixture.Umoci(t)
	tmp := t.TempDir()
	layers, err := fixture.Layers(tmp)
	if err != nil {
		t.Fatal(err)
	}
	src, ref := filepath.Join(tmp, "src"), filepath.Join(tmp, "gzip")
	if err := fixture.WriteLayoutZstd(src, "v1", layers, 4<<10); err != nil {
		t.Fatal(err)
	}
	if err := fixture.WriteLayout(ref, "v1", layers); err != nil {
		t.Fatal(err)
	}
	res := indexFixture(t, src)
	checkMatchesUmoci(t, umoci, ref, mountLayers(t, indexedLayers(t, src, res.Images[0])))
}

// indexFixture indexes the fixture image in the layout src, tag v1, at the
// smallest spacing.
func indexFixture(t *testing.T, src string) convert.IndexResult {
	t.Helper()
	c, err := convert.New(convert.Options{WorkDir: t.TempDir(), VirtualSize: 256 << 20, Algorithm: zfile.ZSTD})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Index(context.Background(), "oci:"+src+":v1", convert.IndexOptions{Spacing: gzindex.MinSpacing})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Images) != 1 || len(res.Images[0].Layers) != 3 {
		t.Fatalf("result %+v, want one image of 3 layers", res)
	}
	return res
}
