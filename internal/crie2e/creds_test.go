package crie2e

import (
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
)

// secret is the registry password of the credential tests: distinctive, so that a search of
// logs, state and metrics for it finds only a leak.
const secret = "obd-cri-Secret-4711"

// privateImages pushes the pause image to an anonymous registry and an obd image to one that
// wants basic auth.
func privateImages(t *testing.T) (pauseReg, reg *testregistry.Registry, im images) {
	t.Helper()
	pauseReg = testregistry.Start(t, testregistry.Options{})
	reg = testregistry.Start(t, testregistry.Options{Auth: testregistry.AuthBasic, Password: secret})
	return pauseReg, reg, pushImages(t, pauseReg, reg, "obdtest/private")
}

// noDockerConfig points bdd at a config.json that does not exist: the node has none.
func noDockerConfig(t *testing.T) (string, testenv.BDDOption) {
	path := filepath.Join(t.TempDir(), "docker", "config.json")
	return path, testenv.WithDockerConfig(path)
}

// runBusybox starts a container of image in a new pod and checks that it reads the whole of
// /bin/busybox from its lazily served root.
func (n *node) runBusybox(t *testing.T, podName, image, wantMD5 string) (podID, id string) {
	t.Helper()
	p := n.runPod(t, podName)
	t.Cleanup(func() { _, _ = n.crictl.Try("rmp", "-f", p.id) })
	id, err := n.createContainer(t, p, "app", image, "/bin/sh", "-c", sleepCmd)
	if err != nil {
		t.Fatal(err)
	}
	n.crictl.Run(t, "start", id)
	if out := n.crictl.Run(t, "exec", "-s", id, "md5sum", "/bin/busybox"); !strings.HasPrefix(out, wantMD5) {
		t.Fatalf("md5sum /bin/busybox in the container = %q, want %s", out, wantMD5)
	}
	return p.id, id
}

// TestE2ECRIPullCredentials is a pod spec's pull secret on a node without any docker config:
// kubelet (here crictl) pulls with credentials through the snapshotter's CRI image proxy,
// which hands them to bdd, so the container's lazy reads are authorized. The password appears
// in none of bdd's or the snapshotter's logs, state or metrics.
func TestE2ECRIPullCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: runs bdd, the snapshotter, containerd with CRI and containers")
	}
	pauseReg, reg, im := privateImages(t)
	metricsAddr := testenv.FreeAddr(t)
	_, noConfig := noDockerConfig(t)
	n := startNode(t, nodeOptions{pauseRef: im.pauseRef, criImageProxy: true,
		bdd: []testenv.BDDOption{noConfig, testenv.WithConfig(fmt.Sprintf("metrics_addr = %q", metricsAddr))}},
		pauseReg.Host, reg.Host)

	if _, err := n.crictl.Try("pull", im.obdRef); err == nil {
		t.Fatal("pull of a private image without credentials succeeded")
	}
	n.crictl.Run(t, "pull", "--creds", reg.Username()+":"+secret, im.obdRef)
	podID, id := n.runBusybox(t, "private", im.obdRef, im.busyboxMD5)
	if !n.bdd.LogContains("credentials received", "obdtest/private") {
		t.Fatal("bdd did not log the credentials' arrival")
	}

	n.crictl.Run(t, "rm", "-f", id)
	n.crictl.Run(t, "rmp", "-f", podID)
	checkNoSecret(t, secret, "http://"+metricsAddr+"/metrics", n.bdd.Dir, n.dir)
}

// TestE2ECredentialProvider: containerd alone was given the pull's credentials (crictl talks
// to it directly, no proxy), and bdd gets its own from a kubelet credential provider plugin.
func TestE2ECredentialProvider(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: runs bdd, the snapshotter, containerd with CRI and containers")
	}
	pauseReg, reg, im := privateImages(t)
	plugins := t.TempDir()
	script := fmt.Sprintf("#!/bin/sh\ncat >> %q\necho >> %q\ncat <<'EOF'\n"+
		`{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Image","cacheDuration":"1m","auth":{%q:{"username":%q,"password":%q}}}`+
		"\nEOF\n", filepath.Join(plugins, "request.json"), filepath.Join(plugins, "request.json"), reg.Host, reg.Username(), secret)
	if err := os.WriteFile(filepath.Join(plugins, "obd-test-provider"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	providerConfig := filepath.Join(t.TempDir(), "credential-provider.yaml")
	if err := os.WriteFile(providerConfig, []byte(fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: obd-test-provider
    matchImages: [%q]
    defaultCacheDuration: 5m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
`, reg.Host)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, noConfig := noDockerConfig(t)
	n := startNode(t, nodeOptions{pauseRef: im.pauseRef, bdd: []testenv.BDDOption{noConfig, testenv.WithRegistryConfig(
		fmt.Sprintf("credential_provider_config = %q\ncredential_provider_bin_dir = %q", providerConfig, plugins))}},
		pauseReg.Host, reg.Host)

	n.crictl.Run(t, "pull", "--creds", reg.Username()+":"+secret, im.obdRef)
	n.runBusybox(t, "provider", im.obdRef, im.busyboxMD5)
	request, err := os.ReadFile(filepath.Join(plugins, "request.json"))
	if err != nil || !strings.Contains(string(request), `"image":"`+reg.Host+`/obdtest/private"`) {
		t.Fatalf("the plugin's requests = %q (%v), want a CredentialProviderRequest for the image", request, err)
	}
	checkNoSecret(t, secret, "", n.bdd.Dir, n.dir)
}

// TestE2EDockerConfigWrittenLater: a node whose bdd has no credentials fails to create the
// container (the registry answers 401); once config.json is written, the next create works
// without restarting bdd.
func TestE2EDockerConfigWrittenLater(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: runs bdd, the snapshotter, containerd with CRI and containers")
	}
	pauseReg, reg, im := privateImages(t)
	configPath, noConfig := noDockerConfig(t)
	n := startNode(t, nodeOptions{pauseRef: im.pauseRef, bdd: []testenv.BDDOption{noConfig}}, pauseReg.Host, reg.Host)

	n.crictl.Run(t, "pull", "--creds", reg.Username()+":"+secret, im.obdRef)
	p := n.runPod(t, "later")
	t.Cleanup(func() { _, _ = n.crictl.Try("rmp", "-f", p.id) })
	if _, err := n.createContainer(t, p, "app", im.obdRef, "/bin/sh", "-c", sleepCmd); err == nil ||
		!strings.Contains(err.Error(), "unauthorized") || strings.Contains(err.Error(), secret) {
		t.Fatalf("create without credentials on the node: %v, want unauthorized", err)
	}
	if err := os.MkdirAll(filepath.Dir(configPath), 0o700); err != nil {
		t.Fatal(err)
	}
	writeDockerConfig(t, configPath, reg.Host, reg.Username(), secret)
	n.runBusybox(t, "later2", im.obdRef, im.busyboxMD5)
}

// checkNoSecret fails if the secret occurs in the metrics at metricsURL (unless "") or in any
// file below dirs: logs, state files, caches, configs of the daemons.
func checkNoSecret(t *testing.T, secret, metricsURL string, dirs ...string) {
	t.Helper()
	if metricsURL != "" {
		resp, err := http.Get(metricsURL)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || len(body) == 0 {
			t.Fatalf("GET %s: %s, %v", metricsURL, resp.Status, err)
		}
		if strings.Contains(string(body), secret) {
			t.Errorf("the metrics at %s show the registry password", metricsURL)
		}
	}
	files := 0
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil // sockets, mounts and files gone meanwhile
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			files++
			if strings.Contains(string(data), secret) {
				t.Errorf("%s holds the registry password", path)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if files == 0 {
		t.Fatalf("no files below %v to search", dirs)
	}
}
