package convert_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/bdd"
	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/convert/internal/fstree"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/zfile"
	"golang.org/x/sys/unix"
)

// bddBinDir holds cmd/bdd once a test built it; TestMain removes it.
var bddBinDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if bddBinDir != "" {
		os.RemoveAll(bddBinDir)
	}
	os.Exit(code)
}

var buildBdd = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "convert-test-bdd")
	if err != nil {
		return "", err
	}
	bddBinDir = dir
	bin := filepath.Join(dir, "bdd")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/obdproject/obd/cmd/bdd").CombinedOutput(); err != nil {
		return "", fmt.Errorf("building cmd/bdd: %v\n%s", err, out)
	}
	return bin, nil
})

// startBdd runs the bdd daemon with private dirs and registry credentials
// and returns a client; everything is stopped when the test ends.
func startBdd(t *testing.T, dockerConfig string) bddv1.DaemonClient {
	t.Helper()
	bin, err := buildBdd()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := bdd.DefaultConfig()
	cfg.StateDir, cfg.Socket, cfg.RunDir = filepath.Join(dir, "state"), filepath.Join(dir, "bdd.sock"), filepath.Join(dir, "run")
	toml := fmt.Sprintf("state_dir = %q\nsocket = %q\nrun_dir = %q\n[cache]\ndir = %q\nsize = \"1GiB\"\n[registry]\ndocker_config = %q\n",
		cfg.StateDir, cfg.Socket, cfg.RunDir, filepath.Join(dir, "cache"), dockerConfig)
	if err := os.WriteFile(filepath.Join(dir, "bdd.toml"), []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "bdd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--config", filepath.Join(dir, "bdd.toml"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	client, conn, err := bdd.Dial(cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			t.Error("bdd did not stop on SIGTERM")
			cmd.Process.Kill()
			<-exited
		}
		// The descriptor keeper outlives bdd by design.
		if b, err := os.ReadFile(bdd.KeeperPIDFile(cfg)); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "bdd.log"))
			t.Logf("bdd log:\n%s", b)
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := client.List(ctx, &bddv1.ListRequest{})
		cancel()
		if err == nil {
			return client
		}
		if time.Now().After(deadline) {
			t.Fatalf("bdd did not answer: %v", err)
		}
	}
}

// TestConvertThroughBddMatchesUmoci converts the fixture into a registry,
// attaches the result through the bdd daemon (lazy registry reads), mounts it
// and compares the whole tree with `umoci unpack` of the source image.
func TestConvertThroughBddMatchesUmoci(t *testing.T) {
	requireDevices(t)
	umoci, err := exec.LookPath("umoci")
	if err != nil {
		t.Skip("umoci not installed (apt-get install umoci): it is the independent reference")
	}
	reg := testregistry.Start(t, testregistry.Options{Auth: testregistry.AuthBasic})
	cfgPath := dockerConfig(t, reg)
	src := fixtureLayout(t)
	tmp := t.TempDir()
	ctx := context.Background()
	c, err := convert.New(convert.Options{WorkDir: filepath.Join(tmp, "work"), VirtualSize: 256 << 20,
		Algorithm: zfile.ZSTD, Registry: convert.RegistryOptions{DockerConfig: cfgPath}})
	if err != nil {
		t.Fatal(err)
	}
	repo := reg.Host + "/fixture/bdd"
	if _, err := c.Convert(ctx, "oci:"+src+":v1", repo+":obd"); err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(tmp, "layout")
	if _, err := c.Convert(ctx, "oci:"+src+":v1", "oci:"+layout+":obd"); err != nil {
		t.Fatal(err)
	}
	man := readManifest(t, layout, "obd") // the same image the registry holds (reproducible)

	client := startBdd(t, cfgPath)
	req := &bddv1.AttachRequest{ReadOnly: true, Transport: bddv1.Transport_TRANSPORT_FUSE}
	for _, l := range man.Layers {
		req.Layers = append(req.Layers, &bddv1.Layer{Source: &bddv1.Layer_Blob{Blob: &bddv1.RemoteBlob{Ref: repo, Digest: l.Digest.String(), Size: l.Size}}})
	}
	actx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	resp, err := client.Attach(actx, req)
	if err != nil {
		t.Fatalf("bdd attach: %v", err)
	}
	dev := resp.GetDevice()
	mnt := filepath.Join(tmp, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev.GetDevicePath(), mnt, "ext4", unix.MS_RDONLY, "noload"); err != nil {
		t.Fatalf("mount %s: %v", dev.GetDevicePath(), err)
	}
	mounted := true
	defer func() {
		if mounted {
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	}()

	bundle := filepath.Join(tmp, "bundle")
	if out, err := exec.Command(umoci, "unpack", "--image", src+":v1", bundle).CombinedOutput(); err != nil {
		t.Fatalf("umoci unpack: %v\n%s", err, out)
	}
	want, err := fstree.Snapshot(filepath.Join(bundle, "rootfs"), fstree.Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := fstree.Snapshot(mnt, fstree.Options{Skip: []string{"lost+found"}})
	if err != nil {
		t.Fatal(err)
	}
	delete(want, ".")
	delete(got, ".")
	for _, d := range fstree.Diff(want, got) {
		t.Error(d)
	}

	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, err := client.Detach(actx, &bddv1.DetachRequest{Id: dev.GetId()})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bdd detach: %v", err)
		}
	}
}
