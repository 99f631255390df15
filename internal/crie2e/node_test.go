package crie2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
	"github.com/obdproject/obd/internal/facility"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
)

// nodeConfigPath is the containerd config of the README's Kubernetes section.
const nodeConfigPath = "../../docs/containerd-cri.toml"

// The node paths and names in docs/containerd-cri.toml that a test points at its own.
const (
	nodeSnapshotterSocket = "/run/overlaybd-snapshotter/grpc.sock"
	nodeSnapshotterRoot   = "/var/lib/overlaybd-snapshotter"
	nodeCertsDir          = "/etc/containerd/certs.d"
	nodePauseImage        = "registry.k8s.io/pause:3.10"
	nodePlatform          = "linux/amd64"
)

// node is one Kubernetes node: bdd, overlaybd-snapshotter and containerd with CRI, configured
// from docs/containerd-cri.toml.
type node struct {
	bdd            *testenv.BDD
	ctrd           *testenv.Containerd
	crictl         *testenv.Crictl
	snapshotRoot   string
	snapshotterLog string
	dir            string
}

type nodeOptions struct {
	pauseRef string              // the sandbox image
	bdd      []testenv.BDDOption // bdd's settings
	// criImageProxy serves the snapshotter's CRI image proxy, crictl's image endpoint.
	criImageProxy bool
}

// startNode starts the node's three daemons. registryHosts are plain-HTTP registries given a
// hosts.toml in the node's certs.d, as a node reaching an HTTP registry has.
func startNode(t *testing.T, opts nodeOptions, registryHosts ...string) *node {
	t.Helper()
	testenv.RequireRoot(t)
	if data, err := os.ReadFile("/proc/filesystems"); err != nil || !strings.Contains(string(data), "\toverlay\n") {
		facility.Missing(t, "overlayfs is not available in this kernel")
	}
	testenv.Bin(t, "crictl")
	dir, err := os.MkdirTemp("", "obd-node-") // short: sockets live here
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n := &node{dir: dir, snapshotRoot: filepath.Join(dir, "snapshotter")}
	n.bdd = testenv.StartBDD(t, opts.bdd...)

	certs := filepath.Join(dir, "certs.d")
	for _, host := range registryHosts {
		hostDir := filepath.Join(certs, host)
		if err := os.MkdirAll(hostDir, 0o755); err != nil {
			t.Fatal(err)
		}
		hosts := fmt.Sprintf("server = %q\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+host, "http://"+host)
		if err := os.WriteFile(filepath.Join(hostDir, "hosts.toml"), []byte(hosts), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	snSocket := filepath.Join(dir, "sn.sock")
	config := renderNodeConfig(t, map[string]string{
		nodeSnapshotterSocket: snSocket,
		nodeSnapshotterRoot:   n.snapshotRoot,
		nodeCertsDir:          certs,
		nodePauseImage:        opts.pauseRef,
		nodePlatform:          "linux/" + runtime.GOARCH,
	})
	if !hasCapability(t, capSysResource) {
		// The pause container's oom_score_adj of -998 needs CAP_SYS_RESOURCE, which a test
		// host that is itself a container may lack; kubelet's nodes have it.
		t.Log("no CAP_SYS_RESOURCE: restrict_oom_score_adj = true")
		config += "[plugins.\"io.containerd.cri.v1.runtime\"]\n  restrict_oom_score_adj = true\n"
	}
	n.ctrd = testenv.StartContainerd(t, testenv.ContainerdOptions{NodeConfig: config})

	// containerd reaches the snapshotter only when it first needs it, so the snapshotter, whose
	// CRI image proxy needs containerd's socket, starts second.
	snSettings := map[string]any{
		"root": n.snapshotRoot, "address": snSocket, "bddSocket": n.bdd.Socket,
		"traceDir": filepath.Join(dir, "traces"), "logLevel": "debug", "deviceLinger": "0s",
	}
	imageEndpoint := ""
	if opts.criImageProxy {
		imageEndpoint = filepath.Join(dir, "cri-image.sock")
		snSettings["criImageProxy"] = imageEndpoint
		snSettings["containerdAddress"] = n.ctrd.Address
	}
	snConfigPath := filepath.Join(dir, "snapshotter.json")
	writeJSON(t, snConfigPath, snSettings)
	n.snapshotterLog = filepath.Join(dir, "snapshotter.log")
	ready := testenv.SocketReady(snSocket)
	if imageEndpoint != "" {
		ready = func() error {
			return errors.Join(testenv.SocketReady(snSocket)(), testenv.SocketReady(imageEndpoint)())
		}
	}
	testenv.StartProcess(t, n.snapshotterLog, ready,
		testenv.GoBuild(t, "github.com/obdproject/obd/cmd/overlaybd-snapshotter"), "--config", snConfigPath)
	t.Cleanup(func() {
		if err := testenv.UnmountAll(n.snapshotRoot); err != nil {
			t.Error(err)
		}
	})
	n.crictl = n.ctrd.Crictl(imageEndpoint)
	return n
}

// renderNodeConfig returns docs/containerd-cri.toml with each key of replace, which must occur
// in it, replaced by its value.
func renderNodeConfig(t *testing.T, replace map[string]string) string {
	t.Helper()
	data, err := os.ReadFile(nodeConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	config := string(data)
	for from, to := range replace {
		if !strings.Contains(config, from) {
			t.Fatalf("%s no longer names %q, which the test replaces", nodeConfigPath, from)
		}
		config = strings.ReplaceAll(config, from, to)
	}
	return config
}

func (n *node) devices(t *testing.T) []*bddv1.Device {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := n.bdd.Client.List(ctx, &bddv1.ListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetDevices()
}

// pod is a pod sandbox on the host network, with the spec files crictl takes.
type pod struct {
	id      string
	podJSON string
	logDir  string
}

// runPod starts a host-network pod sandbox (the pause image from the node's config).
func (n *node) runPod(t *testing.T, name string) *pod {
	t.Helper()
	p := &pod{logDir: filepath.Join(n.dir, "pods", name), podJSON: filepath.Join(n.dir, name+"-pod.json")}
	writeJSON(t, p.podJSON, map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "default", "uid": fmt.Sprintf("%s-%d", name, time.Now().UnixNano())},
		"log_directory": p.logDir,
		"linux":         map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}},
	})
	p.id = n.crictl.Run(t, "runp", p.podJSON)
	return p
}

// createContainer creates a container of image in p running command; it returns its ID.
func (n *node) createContainer(t *testing.T, p *pod, name, image string, command ...string) (string, error) {
	t.Helper()
	spec := filepath.Join(n.dir, name+"-container.json")
	writeJSON(t, spec, map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": image},
		"command":  command,
		"log_path": name + ".log",
		"linux":    map[string]any{},
	})
	return n.crictl.Try("create", p.id, spec, p.podJSON)
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// images is what a test pushes to its registry: a pause image and a busybox image converted
// to overlaybd by `obd convert`.
type images struct {
	pauseRef   string
	obdRef     string
	busyboxMD5 string
	plain      *testenv.BusyboxImage // the image before conversion
}

// pushImages pushes the pause image to pauseReg and a busybox image (built with opts),
// converted by `obd convert`, to obdReg as repo:obd.
func pushImages(t *testing.T, pauseReg, obdReg *testregistry.Registry, repo string, opts ...testenv.ImageOpt) images {
	t.Helper()
	skopeo := testenv.Bin(t, "skopeo")
	pause := testenv.BuildBusyboxImage(t, testenv.WithCmd("/bin/sleep", "2147483647"))
	plain := testenv.BuildBusyboxImage(t, opts...)
	im := images{pauseRef: pauseReg.Host + "/obdtest/pause:1", obdRef: obdReg.Host + "/" + repo + ":obd"}
	plainRef := obdReg.Host + "/" + repo + ":plain"
	skopeoCopy(t, skopeo, pause, im.pauseRef, pauseReg)
	skopeoCopy(t, skopeo, plain, plainRef, obdReg)

	obdConvert(t, obdReg, plainRef, im.obdRef)
	im.busyboxMD5 = plain.BusyboxMD5(t)
	im.plain = plain
	return im
}

// obdConvert runs `obd convert` from plainRef to obdRef in reg.
func obdConvert(t *testing.T, reg *testregistry.Registry, plainRef, obdRef string) {
	t.Helper()
	obd := testenv.GoBuild(t, "github.com/obdproject/obd/cmd/obd")
	args := []string{"convert", "--vsize", "256M", "--work-dir", t.TempDir()}
	if reg.Username() != "" {
		cfg := filepath.Join(t.TempDir(), "config.json")
		writeDockerConfig(t, cfg, reg.Host, reg.Username(), reg.Password())
		args = append(args, "--docker-config", cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, obd, append(args, plainRef, obdRef)...).CombinedOutput(); err != nil {
		t.Fatalf("obd convert: %v\n%s", err, out)
	}
}

func skopeoCopy(t *testing.T, skopeo string, img *testenv.BusyboxImage, ref string, reg *testregistry.Registry) {
	t.Helper()
	args := []string{"copy", "--dest-tls-verify=false"}
	if reg.Username() != "" {
		args = append(args, "--dest-creds", reg.Username()+":"+reg.Password())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, skopeo, append(args, "oci:"+img.Layout+":"+img.Tag, "docker://"+ref)...).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy to %s: %v\n%s", ref, err, out)
	}
}

// manifestLayers returns the layer descriptors of repo:tag's manifest (anonymous or basic auth).
func manifestLayers(t *testing.T, reg *testregistry.Registry, repo, tag string) []ocispec.Descriptor {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, reg.URL+"/v2/"+repo+"/manifests/"+tag, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest)
	if reg.Username() != "" {
		req.SetBasicAuth(reg.Username(), reg.Password())
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET manifest %s:%s: %v %s: %s", repo, tag, err, resp.Status, body)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	return m.Layers
}
