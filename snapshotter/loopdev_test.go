package snapshotter

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/obdproject/obd/internal/facility"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/opencontainers/go-digest"
)

// loopDevices is a DeviceManager standing in for bdd in tests: every blob is a directory tree,
// and Attach merges the chain's trees (lowest first) into an ext4 image with mkfs.ext4 -d and
// attaches it to a real loop device. A writable device keeps its image in upperDir, so it
// survives detach and re-attach like bdd's upper layer.
type loopDevices struct {
	t     testing.TB
	dir   string
	blobs map[digest.Digest]string

	mu       sync.Mutex
	attached map[string]string // key → /dev/loopN
	attaches int
	detaches int
	// failDetach makes the next Detach fail, as a busy or vanished daemon would.
	failDetach bool
}

func newLoopDevices(t testing.TB) *loopDevices {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.Bin(t, "mkfs.ext4")
	testenv.Bin(t, "losetup")
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		facility.Missing(t, "no loop device support (/dev/loop-control missing)")
	}
	d := &loopDevices{t: t, dir: t.TempDir(), blobs: map[digest.Digest]string{}, attached: map[string]string{}}
	t.Cleanup(func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		for key, dev := range d.attached {
			t.Errorf("device %s (%s) still attached at the end of the test", key, dev)
			_ = exec.Command("losetup", "-d", dev).Run()
		}
	})
	return d
}

// addBlob registers a layer whose files are files (path → content) and returns its labels.
func (d *loopDevices) addBlob(files map[string]string) RemoteLayer {
	d.t.Helper()
	dir, err := os.MkdirTemp(d.dir, "blob-")
	if err != nil {
		d.t.Fatal(err)
	}
	var names []string
	for name, content := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			d.t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			d.t.Fatal(err)
		}
		names = append(names, name+"="+content)
	}
	layer := RemoteLayer{Ref: "registry.test/app:v1", Digest: digest.FromString(dir + strings.Join(names, ",")), Size: 4096}
	d.blobs[layer.Digest] = dir
	return layer
}

func (d *loopDevices) Attach(ctx context.Context, key string, layers []RemoteLayer, upperDir string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if dev, ok := d.attached[key]; ok {
		return dev, nil
	}
	image := filepath.Join(d.dir, key+".img")
	if upperDir != "" {
		image = filepath.Join(upperDir, "disk.img")
	}
	if _, err := os.Stat(image); err != nil {
		if err := d.buildImage(ctx, image, layers); err != nil {
			return "", err
		}
	}
	args := []string{"--find", "--show"}
	if upperDir == "" {
		args = append(args, "--read-only")
	}
	out, err := exec.CommandContext(ctx, "losetup", append(args, image)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("losetup %s: %v: %s", image, err, out)
	}
	dev := strings.TrimSpace(string(out))
	d.attached[key] = dev
	d.attaches++
	return dev, nil
}

func (d *loopDevices) buildImage(ctx context.Context, image string, layers []RemoteLayer) error {
	merged, err := os.MkdirTemp(d.dir, "merged-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(merged)
	for _, layer := range layers {
		src, ok := d.blobs[layer.Digest]
		if !ok {
			return fmt.Errorf("unknown blob %s", layer.Digest)
		}
		if out, err := exec.CommandContext(ctx, "cp", "-a", src+"/.", merged).CombinedOutput(); err != nil {
			return fmt.Errorf("cp: %v: %s", err, out)
		}
	}
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-d", merged, image, "16M").CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %v: %s", err, out)
	}
	return nil
}

func (d *loopDevices) Detach(ctx context.Context, key string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failDetach {
		d.failDetach = false
		return fmt.Errorf("detach %s: injected failure", key)
	}
	dev, ok := d.attached[key]
	if !ok {
		return nil
	}
	if out, err := exec.CommandContext(ctx, "losetup", "-d", dev).CombinedOutput(); err != nil {
		return fmt.Errorf("losetup -d %s: %v: %s", dev, err, out)
	}
	delete(d.attached, key)
	d.detaches++
	return nil
}

// counts returns how many devices are attached now and how many attaches and detaches ran.
func (d *loopDevices) counts() (attached, attaches, detaches int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.attached), d.attaches, d.detaches
}
