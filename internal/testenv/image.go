package testenv

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BusyboxImage is a one-layer OCI image holding a static busybox, built offline.
type BusyboxImage struct {
	Layout  string // OCI image layout directory
	Tag     string // tag inside Layout
	Archive string // Layout as an OCI archive tar, for `nerdctl load -i`
	Ref     string // the name nerdctl gives the loaded image
}

// busyboxApplets are the commands the image links to /bin/busybox.
var busyboxApplets = []string{"sh", "echo", "cat", "ls", "mount", "sleep", "true", "stat", "wc", "head"}

// BuildBusyboxImage makes a one-layer busybox image with umoci (init, new, insert, config) from
// Debian's busybox-static in t.TempDir(). It skips when umoci or busybox is not installed.
func BuildBusyboxImage(t testing.TB) *BusyboxImage {
	t.Helper()
	umoci := Bin(t, "umoci")
	busybox := Bin(t, "busybox")
	dir := t.TempDir()
	img := &BusyboxImage{
		Layout:  filepath.Join(dir, "layout"),
		Tag:     "busybox",
		Archive: filepath.Join(dir, "busybox.tar"),
		Ref:     "docker.io/obdtest/busybox:latest",
	}

	rootfs := filepath.Join(dir, "rootfs", "bin")
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
	steps := [][]string{
		{"init", "--layout", img.Layout},
		{"new", "--image", image},
		{"insert", "--image", image, rootfs, "/bin"},
		{"config", "--image", image, "--config.cmd", "/bin/sh", "--config.env", "PATH=/bin"},
	}
	for _, args := range steps {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, umoci, args...).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("testenv: umoci %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	if err := nameImage(filepath.Join(img.Layout, "index.json"), img.Ref); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if err := tarDir(img.Layout, img.Archive); err != nil {
		t.Fatalf("testenv: archive %s: %v", img.Layout, err)
	}
	return img
}

// nameImage sets containerd's image-name annotation on the layout's only manifest, so that an
// import stores the image under ref (umoci's tag alone would be imported as a bare "busybox").
func nameImage(indexPath, ref string) error {
	data, err := os.ReadFile(indexPath)
	if err != nil {
		return err
	}
	var index map[string]any
	if err := json.Unmarshal(data, &index); err != nil {
		return fmt.Errorf("parse %s: %w", indexPath, err)
	}
	manifests, _ := index["manifests"].([]any)
	if len(manifests) != 1 {
		return fmt.Errorf("%s: want one manifest, have %d", indexPath, len(manifests))
	}
	manifest, _ := manifests[0].(map[string]any)
	annotations, _ := manifest["annotations"].(map[string]any)
	if annotations == nil {
		annotations = map[string]any{}
	}
	annotations["io.containerd.image.name"] = ref
	manifest["annotations"] = annotations
	if data, err = json.Marshal(index); err != nil {
		return err
	}
	return os.WriteFile(indexPath, data, 0o644)
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
