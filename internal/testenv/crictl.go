package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// CRINamespace is the containerd namespace the CRI plugin keeps Kubernetes' images and
// containers in.
const CRINamespace = "k8s.io"

// Crictl runs crictl (cri-tools, installed by scripts/setup.sh) against a CRI runtime
// endpoint and an image endpoint, as kubelet is configured with containerRuntimeEndpoint and
// imageServiceEndpoint. Its config file is empty, so a host's /etc/crictl.yaml stays out.
type Crictl struct {
	RuntimeEndpoint string // unix socket path
	ImageEndpoint   string // unix socket path; the runtime endpoint when empty
	c               *Containerd
}

// Crictl returns a crictl runner for this containerd's CRI plugin; imageEndpoint, when not
// empty, is a different image service socket (a proxy in front of containerd).
func (c *Containerd) Crictl(imageEndpoint string) *Crictl {
	if imageEndpoint == "" {
		imageEndpoint = c.Address
	}
	return &Crictl{RuntimeEndpoint: c.Address, ImageEndpoint: imageEndpoint, c: c}
}

func (cr *Crictl) args(args []string) []string {
	return append([]string{
		"--config", filepath.Join(cr.c.Dir, "crictl.yaml"),
		"--runtime-endpoint", "unix://" + cr.RuntimeEndpoint,
		"--image-endpoint", "unix://" + cr.ImageEndpoint,
		"--timeout", "2m",
	}, args...)
}

// Run runs crictl with args and returns its standard output; a failure fails the test with
// both output streams.
func (cr *Crictl) Run(t testing.TB, args ...string) string {
	t.Helper()
	Bin(t, "crictl")
	stdout, err := cr.Try(args...)
	if err != nil {
		t.Fatalf("testenv: %v\nstdout:\n%s", err, stdout)
	}
	return stdout
}

// Try runs crictl like Run but returns a failure (with its standard error) instead of failing
// the test.
func (cr *Crictl) Try(args ...string) (stdout string, err error) {
	crictl, ok := findBin("crictl")
	if !ok {
		return "", errors.New("testenv: crictl not found (run `make deps`)")
	}
	if err := os.WriteFile(filepath.Join(cr.c.Dir, "crictl.yaml"), nil, 0o600); err != nil {
		return "", err
	}
	stdout, stderr, err := cr.c.exec(crictl, cr.args(args))
	if err != nil {
		return stdout, fmt.Errorf("crictl %s: %w: %s", strings.Join(redactCreds(args), " "), err, stderr)
	}
	return strings.TrimSpace(stdout), nil
}

// redactCreds hides the values of crictl's credential flags.
func redactCreds(args []string) []string {
	out := append([]string(nil), args...)
	for i, a := range out {
		switch {
		case (a == "--creds" || a == "--auth") && i+1 < len(out):
			out[i+1] = "REDACTED"
		case strings.HasPrefix(a, "--creds=") || strings.HasPrefix(a, "--auth="):
			out[i] = a[:strings.IndexByte(a, '=')+1] + "REDACTED"
		}
	}
	return out
}
