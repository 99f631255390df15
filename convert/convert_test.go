package convert_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/convert/internal/extmount"
	"github.com/obdproject/obd/convert/internal/fixture"
	"github.com/obdproject/obd/convert/internal/fstree"
	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/internal/facility"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/ipfsnode"
	"github.com/obdproject/obd/layerblob"
	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/rangetable"
	"github.com/obdproject/obd/zfile"
)

// requireDevices skips unless the machine can run the converter's device path.
func requireDevices(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		facility.Missing(t, "needs root to attach loop devices and mount ext4")
	}
	for _, p := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(p); err != nil {
			facility.Missing(t, "%s is missing: the FUSE + loop transport cannot run", p)
		}
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		facility.Missing(t, "mkfs.ext4 not installed (apt-get install e2fsprogs)")
	}
}

// fixtureLayout writes the fixture image as oci:DIR:v1 and returns DIR.
func fixtureLayout(t *testing.T) string {
	t.Helper()
	tmp := t.TempDir()
	layers, err := fixture.Layers(tmp)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(tmp, "src")
	if err := fixture.WriteLayout(dir, "v1", layers); err != nil {
		t.Fatal(err)
	}
	return dir
}

func newConverter(t *testing.T, work string, algo zfile.Algorithm) *convert.Converter {
	t.Helper()
	c, err := convert.New(convert.Options{WorkDir: work, VirtualSize: 256 << 20, Algorithm: algo})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// readManifest reads the manifest tagged tag in an OCI layout.
func readManifest(t *testing.T, dir, tag string) ocispec.Manifest {
	t.Helper()
	var idx ocispec.Index
	readJSON(t, filepath.Join(dir, "index.json"), &idx)
	for _, m := range idx.Manifests {
		if m.Annotations[ocispec.AnnotationRefName] == tag {
			var man ocispec.Manifest
			readJSON(t, blobPath(dir, m.Digest.Encoded()), &man)
			return man
		}
	}
	t.Fatalf("%s has no tag %s", dir, tag)
	return ocispec.Manifest{}
}

func blobPath(dir, hex string) string { return filepath.Join(dir, "blobs", "sha256", hex) }

func readJSON(t testing.TB, p string, v any) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
}

// mountConverted stacks the converted layers of an OCI layout, attaches them
// read-only and mounts the ext4; it returns the mount point.
func mountConverted(t *testing.T, dir string, man ocispec.Manifest) string {
	t.Helper()
	var layers []lsmt.Layer
	for _, l := range man.Layers {
		f, err := os.Open(blobPath(dir, l.Digest.Encoded()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		fl, err := layerblob.Open(f, l.Size, l.Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, fl)
	}
	return mountLayers(t, layers)
}

// mountLayers stacks layers, attaches them read-only and mounts the ext4
// inside; it returns the mount point.
func mountLayers(t *testing.T, layers []lsmt.Layer) string {
	t.Helper()
	stack, err := lsmt.NewStack(layers, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	m, err := extmount.Mount(context.Background(), stack, extmount.Options{Dir: t.TempDir(), ReadOnly: true, Data: "noload"})
	if err != nil {
		t.Fatalf("mount converted image: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return m.Path
}

// TestConvertMatchesUmoci converts the fixture image, mounts the result and
// compares the whole tree with `umoci unpack` of the source image.
func TestConvertMatchesUmoci(t *testing.T) {
	requireDevices(t)
	umoci := fixture.Umoci(t)
	src := fixtureLayout(t)
	tmp := t.TempDir()
	dst := filepath.Join(tmp, "dst")
	ctx := context.Background()
	res, err := newConverter(t, filepath.Join(tmp, "work"), zfile.ZSTD).Convert(ctx, "oci:"+src+":v1", "oci:"+dst+":obd")
	if err != nil {
		t.Fatal(err)
	}
	if res.Layers != 3 || res.Reused != 0 {
		t.Errorf("result %+v, want 3 converted layers", res)
	}
	man := readManifest(t, dst, "obd")
	checkManifest(t, dst, man)

	checkMatchesUmoci(t, umoci, src, mountConverted(t, dst, man))
}

// checkMatchesUmoci compares the tree mounted at mnt with `umoci unpack` of the fixture
// layout src, tag v1: the converter's output must hold exactly what the image holds.
func checkMatchesUmoci(t *testing.T, umoci, src, mnt string) {
	t.Helper()
	want := fixture.UmociTree(t, umoci, src, "v1")
	got, err := fstree.Snapshot(mnt, fstree.Options{Skip: []string{"lost+found"}})
	if err != nil {
		t.Fatal(err)
	}
	delete(got, ".")
	for _, d := range fstree.Diff(want, got) {
		t.Error(d)
	}
}

func checkManifest(t *testing.T, dir string, man ocispec.Manifest) {
	t.Helper()
	var cfg ocispec.Image
	readJSON(t, blobPath(dir, man.Config.Digest.Encoded()), &cfg)
	if len(man.Layers) != 3 || len(cfg.RootFS.DiffIDs) != 3 {
		t.Fatalf("%d layers, %d diff_ids; want 3", len(man.Layers), len(cfg.RootFS.DiffIDs))
	}
	for i, l := range man.Layers {
		if l.MediaType != ocispec.MediaTypeImageLayer {
			t.Errorf("layer %d media type %s", i, l.MediaType)
		}
		for k, v := range map[string]string{
			imagelabels.BlobDigest: l.Digest.String(),
			imagelabels.FSType:     "ext4",
			imagelabels.Version:    "0.1.0",
		} {
			if l.Annotations[k] != v {
				t.Errorf("layer %d annotation %s = %q, want %q", i, k, l.Annotations[k], v)
			}
		}
		checkRangeTable(t, blobPath(dir, l.Digest.Encoded()), l)
		if cfg.RootFS.DiffIDs[i] != l.Digest {
			t.Errorf("diff_id %d = %s, want the uncompressed tar digest %s", i, cfg.RootFS.DiffIDs[i], l.Digest)
		}
	}
	if len(cfg.History) != 3 || cfg.History[2].CreatedBy != "fixture layer 3" {
		t.Errorf("history not kept: %+v", cfg.History)
	}
	if strings.Join(cfg.Config.Entrypoint, " ") != "/usr/bin/su" || cfg.Config.Labels["fixture"] != "obd" {
		t.Errorf("config not kept: %+v", cfg.Config)
	}
}

// checkRangeTable checks the range table a layer blob carries after its tar: pinned by the
// descriptor's annotations, covering every byte before it.
func checkRangeTable(t *testing.T, path string, l ocispec.Descriptor) {
	t.Helper()
	blob, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	table, off, err := imagelabels.ParseRangeTable(l.Annotations[imagelabels.RangeTable], l.Annotations[imagelabels.RangeTableOffset], l.Size)
	if err != nil || table == "" {
		t.Fatalf("layer %s: range table annotations %v (%v)", l.Digest, l.Annotations, err)
	}
	if off%512 != 0 || digest.FromBytes(blob[off:]) != table {
		t.Fatalf("layer %s: the bytes at %d are not the pinned range table", l.Digest, off)
	}
	tbl, err := rangetable.Parse(blob[off:])
	if err != nil || tbl.Covered() != off || tbl.Chunk() != rangetable.DefaultChunk {
		t.Fatalf("layer %s: range table %v (%v)", l.Digest, tbl, err)
	}
	for pos := int64(0); pos < off; pos += tbl.Chunk() {
		from, to := tbl.ChunkRange(pos)
		if err := tbl.Check(from, blob[from:to]); err != nil {
			t.Fatalf("layer %s: %v", l.Digest, err)
		}
	}
}

// TestConvertReproducibleAndCached converts the fixture twice in separate work
// directories (identical digests), again in the first (every layer reused),
// and then converts the result (a no-op).
func TestConvertReproducibleAndCached(t *testing.T) {
	requireDevices(t)
	src := fixtureLayout(t)
	tmp := t.TempDir()
	ctx := context.Background()
	c1 := newConverter(t, filepath.Join(tmp, "work1"), zfile.LZ4)
	r1, err := c1.Convert(ctx, "oci:"+src+":v1", "oci:"+filepath.Join(tmp, "dst1"))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := newConverter(t, filepath.Join(tmp, "work2"), zfile.LZ4).Convert(ctx, "oci:"+src+":v1", "oci:"+filepath.Join(tmp, "dst2"))
	if err != nil {
		t.Fatal(err)
	}
	if r1.Descriptor.Digest != r2.Descriptor.Digest {
		m1 := readManifest(t, filepath.Join(tmp, "dst1"), "latest")
		m2 := readManifest(t, filepath.Join(tmp, "dst2"), "latest")
		for i := range m1.Layers {
			t.Logf("layer %d: %s vs %s", i+1, m1.Layers[i].Digest, m2.Layers[i].Digest)
		}
		t.Errorf("two conversions differ: %s vs %s", r1.Descriptor.Digest, r2.Descriptor.Digest)
	}
	r3, err := c1.Convert(ctx, "oci:"+src+":v1", "oci:"+filepath.Join(tmp, "dst3"))
	if err != nil {
		t.Fatal(err)
	}
	if r3.Reused != 3 || r3.Layers != 0 || r3.Descriptor.Digest != r1.Descriptor.Digest {
		t.Errorf("cached conversion %+v, want 3 reused layers and digest %s", r3, r1.Descriptor.Digest)
	}
	_, err = c1.Convert(ctx, "oci:"+filepath.Join(tmp, "dst1"), "oci:"+filepath.Join(tmp, "dst4"))
	if !errors.Is(err, convert.ErrAlreadyConverted) {
		t.Errorf("converting a converted image: %v, want ErrAlreadyConverted", err)
	}
	if _, err := os.Stat(filepath.Join(tmp, "dst4")); !os.IsNotExist(err) {
		t.Errorf("no-op conversion created its destination: %v", err)
	}
}

// TestConvertZstdLevel: --level reaches every layer's ZFile, and a converted layer cached at
// one level is not reused for another.
func TestConvertZstdLevel(t *testing.T) {
	requireDevices(t)
	src := fixtureLayout(t)
	tmp := t.TempDir()
	work := filepath.Join(tmp, "work")
	levels := map[int]digest.Digest{}
	for _, level := range []int{0, 19} {
		c, err := convert.New(convert.Options{WorkDir: work, VirtualSize: 256 << 20, Algorithm: zfile.ZSTD, Level: level})
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(tmp, fmt.Sprint("dst", level))
		res, err := c.Convert(context.Background(), "oci:"+src+":v1", "oci:"+dst)
		if err != nil {
			t.Fatal(err)
		}
		if res.Reused != 0 {
			t.Errorf("level %d reused %d layers converted at another level", level, res.Reused)
		}
		levels[level] = res.Descriptor.Digest
		want := level
		if want == 0 {
			want = zfile.DefaultZstdLevel
		}
		for _, l := range readManifest(t, dst, "latest").Layers {
			b, err := layerblob.OpenFile(blobPath(dst, l.Digest.Encoded()))
			if err != nil {
				t.Fatal(err)
			}
			got := b.ZFile.Info().Level
			b.Close()
			if got != want {
				t.Errorf("level %d: layer %s has ZFile level %d, want %d", level, l.Digest, got, want)
			}
		}
	}
	if levels[0] == levels[19] {
		t.Error("levels 3 and 19 gave the same image")
	}
}

// TestConvertBeforeTag: Options.BeforeTag sees the converted image once it is at the
// destination, and its error fails the conversion with the destination's tag left unset.
// With an IPFS node, each converted layer is named ipfs://<CID> in its descriptor's urls and
// annotation, the CID kubo's CLI gives the blob; without IPFSPin nothing is stored.
func TestConvertNamesLayersInIPFS(t *testing.T) {
	requireDevices(t)
	k := testenv.StartKubo(t, testenv.KuboOptions{})
	client, err := ipfsnode.NewClient(k.API)
	if err != nil {
		t.Fatal(err)
	}
	src := fixtureLayout(t)
	tmp := t.TempDir()
	c, err := convert.New(convert.Options{WorkDir: filepath.Join(tmp, "work"), VirtualSize: 256 << 20, IPFS: client})
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(tmp, "dst")
	if _, err := c.Convert(context.Background(), "oci:"+src+":v1", "oci:"+dst+":obd"); err != nil {
		t.Fatal(err)
	}
	m := readManifest(t, dst, "obd")
	for _, l := range m.Layers {
		want := ipfsnode.Scheme + k.Run(t, "add", "-q", "--only-hash", "--cid-version", "1", blobPath(dst, l.Digest.Encoded()))
		if len(l.URLs) != 1 || l.URLs[0] != want || l.Annotations[imagelabels.IPFSURL] != want {
			t.Fatalf("layer %s: urls %v, annotation %q; want %s in both", l.Digest, l.URLs, l.Annotations[imagelabels.IPFSURL], want)
		}
		cid, _ := ipfsnode.ParseURL(want)
		if k.Pinned(cid) {
			t.Fatalf("layer %s is stored in the node without IPFSPin", l.Digest)
		}
	}
}

func TestConvertBeforeTag(t *testing.T) {
	requireDevices(t)
	src := fixtureLayout(t)
	tmp := t.TempDir()
	ctx := context.Background()
	var seen ocispec.Descriptor
	hookErr := errors.New("the recording failed")
	convertWith := func(dst string, err error) (convert.Result, error) {
		c, nerr := convert.New(convert.Options{WorkDir: filepath.Join(tmp, "work"), VirtualSize: 256 << 20,
			BeforeTag: func(_ context.Context, desc ocispec.Descriptor) error {
				seen = desc
				return err
			}})
		if nerr != nil {
			t.Fatal(nerr)
		}
		return c.Convert(ctx, "oci:"+src+":v1", "oci:"+filepath.Join(tmp, dst)+":obd")
	}
	if _, err := convertWith("failed", hookErr); !errors.Is(err, hookErr) {
		t.Fatalf("Convert with a failing BeforeTag: err = %v, want it", err)
	}
	if _, err := os.Stat(blobPath(filepath.Join(tmp, "failed"), seen.Digest.Encoded())); err != nil {
		t.Fatalf("BeforeTag ran before the manifest %s was at the destination: %v", seen.Digest, err)
	}
	if index, err := os.ReadFile(filepath.Join(tmp, "failed", "index.json")); err == nil && strings.Contains(string(index), `"obd"`) {
		t.Fatalf("a failed BeforeTag left the tag set: %s", index)
	}
	res, err := convertWith("done", nil)
	if err != nil {
		t.Fatal(err)
	}
	if seen.Digest != res.Descriptor.Digest {
		t.Fatalf("BeforeTag saw %s, the conversion pushed %s", seen.Digest, res.Descriptor.Digest)
	}
	if m := readManifest(t, filepath.Join(tmp, "done"), "obd"); len(m.Layers) == 0 {
		t.Fatal("the tag of a conversion whose BeforeTag passed names no image")
	}
}
