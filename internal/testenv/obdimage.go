package testenv

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// BuildDirImage writes the tree at root as a one-layer OCI image layout in t.TempDir() (an
// uncompressed tar layer made by GNU tar, so symlinks, hard links and modes come along) and
// returns the layout's "oci:DIR:TAG" reference, the source form `obd convert` takes.
func BuildDirImage(t testing.TB, root string, cmd ...string) string {
	t.Helper()
	layout := filepath.Join(t.TempDir(), "layout")
	blobs := filepath.Join(layout, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	layerTar := filepath.Join(layout, "layer.tar")
	if out, err := exec.Command("tar", "--numeric-owner", "-C", root, "-cf", layerTar, ".").CombinedOutput(); err != nil {
		t.Fatalf("testenv: tar %s: %v\n%s", root, err, out)
	}
	f, err := os.Open(layerTar)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	layerDigest, err := digest.FromReader(f)
	f.Close()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	st, err := os.Stat(layerTar)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if err := os.Rename(layerTar, filepath.Join(blobs, layerDigest.Encoded())); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	put := func(mediaType string, v any) ocispec.Descriptor {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		d := digest.FromBytes(data)
		if err := os.WriteFile(filepath.Join(blobs, d.Encoded()), data, 0o644); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}
	}
	config := put(ocispec.MediaTypeImageConfig, ocispec.Image{
		Platform: ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		Config:   ocispec.ImageConfig{Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}, Cmd: cmd},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layerDigest}},
	})
	manifest := put(ocispec.MediaTypeImageManifest, ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: config,
		Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: layerDigest, Size: st.Size()}},
	})
	manifest.Annotations = map[string]string{ocispec.AnnotationRefName: "dir"}
	index, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{manifest}})
	if err := os.WriteFile(filepath.Join(layout, "index.json"), index, 0o644); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if err := os.WriteFile(filepath.Join(layout, ocispec.ImageLayoutFile), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return "oci:" + layout + ":dir"
}

// PythonImageCommand is the start `ConvertPythonImage` records: what a function's handler
// imports at its start in the sandbox tests.
var PythonImageCommand = []string{"/usr/bin/python3", "-I", "-c", "import json, sqlite3"}

// ConvertPythonImage pushes the python3 rootfs (PythonRootfs) to dst, a registry reference
// bdd can read, as an obd image: `obd convert --record-trace` (built from this module)
// converts it and records its start (PythonImageCommand) on b, so the registry holds the
// image and a start trace artifact referring to it.
func ConvertPythonImage(t testing.TB, b *BDD, dst string) {
	t.Helper()
	src := BuildDirImage(t, PythonRootfs(t), PythonImageCommand...)
	obd := GoBuild(t, "github.com/obdproject/obd/cmd/obd")
	args := append([]string{"convert", "--work-dir", filepath.Join(t.TempDir(), "work"), "--vsize", "1G",
		"--record-trace", "--bdd-socket", b.Socket, src, dst, "--"}, PythonImageCommand...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, obd, args...)
	cmd.Env = append(os.Environ(), "PATH="+pathWithDeps())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("testenv: obd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if !strings.Contains(string(out), "start trace sha256:") {
		t.Fatalf("testenv: obd convert --record-trace pushed no start trace:\n%s", out)
	}
}
