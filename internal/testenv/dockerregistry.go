package testenv

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// StartDockerRegistry runs Debian's docker-registry (distribution 2.8: no referrers API) on a
// free 127.0.0.1 port, anonymous, with its storage in a temp dir, and returns its
// "127.0.0.1:port". It skips the test when the program is not installed; the registry stops
// when the test ends, and its log's tail is printed when the test failed.
func StartDockerRegistry(t testing.TB) string {
	t.Helper()
	binary := Bin(t, "docker-registry")
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	host := ln.Addr().String()
	ln.Close() // free for the registry, which may lose it to another listener: rare, and loud
	config := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"+
		"storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n",
		filepath.Join(dir, "storage"), host)
	configPath := filepath.Join(dir, "registry.yml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	client := &http.Client{Timeout: time.Second}
	StartProcess(t, filepath.Join(dir, "registry.log"), func() error {
		resp, err := client.Get("http://" + host + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	}, binary, "serve", configPath)
	return host
}
