package testenv

import (
	"archive/tar"
	"context"
	"crypto/md5"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// BusyboxImage is a one-layer OCI image holding a static busybox, built offline.
type BusyboxImage struct {
	Layout  string // OCI image layout directory
	Tag     string // tag inside Layout
	Archive string // Layout as an OCI archive tar, for `nerdctl load -i`
	Ref     string // the name nerdctl gives the loaded image
	RootFS  string // the directory tree the layer was made from
}

// ImageOpt changes how BuildBusyboxImage builds the image.
type ImageOpt func(*imageOptions)

type imageOptions struct {
	layerAnnotations map[string]string
	cmd              []string
	dataFiles        map[string][]byte
}

// WithDataFile adds a file /data/name holding data to the image.
func WithDataFile(name string, data []byte) ImageOpt {
	return func(o *imageOptions) {
		if o.dataFiles == nil {
			o.dataFiles = map[string][]byte{}
		}
		o.dataFiles[name] = data
	}
}

// WithCmd sets the image's command (default /bin/sh).
func WithCmd(args ...string) ImageOpt {
	return func(o *imageOptions) { o.cmd = args }
}

// WithLayerAnnotations adds annotations to the layer descriptors of the image's manifest.
// containerd passes those under containerd.io/snapshot/ to the snapshotter as labels.
func WithLayerAnnotations(annotations map[string]string) ImageOpt {
	return func(o *imageOptions) { o.layerAnnotations = annotations }
}

// busyboxApplets are the commands the image links to /bin/busybox.
var busyboxApplets = []string{"sh", "echo", "cat", "ls", "mount", "sleep", "true", "stat", "wc", "head", "md5sum", "dd"}

// BuildBusyboxImage makes a one-layer busybox image with umoci (init, new, insert, config) from
// Debian's busybox-static in t.TempDir(). It skips when umoci or busybox is not installed.
func BuildBusyboxImage(t testing.TB, opts ...ImageOpt) *BusyboxImage {
	t.Helper()
	var options imageOptions
	for _, opt := range opts {
		opt(&options)
	}
	umoci := Bin(t, "umoci")
	busybox := Bin(t, "busybox")
	dir := t.TempDir()
	img := &BusyboxImage{
		Layout:  filepath.Join(dir, "layout"),
		Tag:     "busybox",
		Archive: filepath.Join(dir, "busybox.tar"),
		Ref:     "docker.io/obdtest/busybox:latest",
		RootFS:  filepath.Join(dir, "rootfs"),
	}

	rootfs := filepath.Join(img.RootFS, "bin")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if err := copyFile(busybox, filepath.Join(rootfs, "busybox"), 0o755); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	for _, applet := range busyboxApplets {
		if err := os.Symlink("busybox", filepath.Join(rootfs, applet)); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}

	image := img.Layout + ":" + img.Tag
	cmd := options.cmd
	if len(cmd) == 0 {
		cmd = []string{"/bin/sh"}
	}
	config := []string{"config", "--image", image, "--config.env", "PATH=/bin"}
	for _, arg := range cmd {
		config = append(config, "--config.cmd", arg)
	}
	steps := [][]string{
		{"init", "--layout", img.Layout},
		{"new", "--image", image},
		{"insert", "--image", image, rootfs, "/bin"},
	}
	if len(options.dataFiles) > 0 {
		data := filepath.Join(img.RootFS, "data")
		if err := os.MkdirAll(data, 0o755); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		for name, content := range options.dataFiles {
			if err := os.WriteFile(filepath.Join(data, name), content, 0o644); err != nil {
				t.Fatalf("testenv: %v", err)
			}
		}
		steps = append(steps, []string{"insert", "--image", image, data, "/data"})
	}
	steps = append(steps, config)
	for _, args := range steps {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, umoci, args...).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("testenv: umoci %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	if err := finishLayout(img.Layout, img.Ref, options.layerAnnotations); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if err := tarDir(img.Layout, img.Archive); err != nil {
		t.Fatalf("testenv: archive %s: %v", img.Layout, err)
	}
	return img
}

// finishLayout sets containerd's image-name annotation on the layout's only manifest, so that
// an import stores the image under ref (umoci's tag alone would be imported as a bare
// "busybox"), and adds layerAnnotations to its layer descriptors, which rewrites the manifest
// blob under a new digest.
func finishLayout(layout, ref string, layerAnnotations map[string]string) error {
	indexPath := filepath.Join(layout, "index.json")
	var index ocispec.Index
	if err := readJSON(indexPath, &index); err != nil {
		return err
	}
	if len(index.Manifests) != 1 {
		return fmt.Errorf("%s: want one manifest, have %d", indexPath, len(index.Manifests))
	}
	desc := &index.Manifests[0]
	if len(layerAnnotations) > 0 {
		manifestPath := filepath.Join(layout, "blobs", desc.Digest.Algorithm().String(), desc.Digest.Encoded())
		var manifest ocispec.Manifest
		if err := readJSON(manifestPath, &manifest); err != nil {
			return err
		}
		for i := range manifest.Layers {
			if manifest.Layers[i].Annotations == nil {
				manifest.Layers[i].Annotations = map[string]string{}
			}
			maps.Copy(manifest.Layers[i].Annotations, layerAnnotations)
		}
		data, err := json.Marshal(manifest)
		if err != nil {
			return err
		}
		desc.Digest, desc.Size = digest.FromBytes(data), int64(len(data))
		if err := os.WriteFile(filepath.Join(layout, "blobs", desc.Digest.Algorithm().String(), desc.Digest.Encoded()), data, 0o644); err != nil {
			return err
		}
	}
	if desc.Annotations == nil {
		desc.Annotations = map[string]string{}
	}
	desc.Annotations["io.containerd.image.name"] = ref
	data, err := json.Marshal(index)
	if err != nil {
		return err
	}
	return os.WriteFile(indexPath, data, 0o644)
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	return nil
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Close()
}

// tarDir writes the regular files and directories below root into a tar at dst, with paths
// relative to root (the shape of an OCI archive).
func tarDir(root, dst string) error {
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(out)
	walkErr := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == root {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if d.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if walkErr != nil {
		out.Close()
		return walkErr
	}
	if err := tw.Close(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// BusyboxMD5 is the hex MD5 of the image's /bin/busybox, for checking what a container reads.
func (img *BusyboxImage) BusyboxMD5(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(img.RootFS, "bin", "busybox"))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return fmt.Sprintf("%x", md5.Sum(data))
}
