package crie2e

import (
	"os"
	"strings"
	"testing"
)

// TestReadmeHasNodeConfig checks that the README's Kubernetes section shows
// docs/containerd-cri.toml verbatim, so the configuration users copy is the one the end-to-end
// tests run.
func TestReadmeHasNodeConfig(t *testing.T) {
	config, err := os.ReadFile(nodeConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "```toml\n"+string(config)+"```\n") {
		t.Fatalf("README.md does not show %s verbatim in a toml block", nodeConfigPath)
	}
}
