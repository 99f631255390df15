package crie2e

import (
	"encoding/base64"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// writeDockerConfig writes a docker config.json giving user and password for host.
func writeDockerConfig(t *testing.T, path, host, user, password string) {
	t.Helper()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	writeJSON(t, path, map[string]any{"auths": map[string]any{host: map[string]string{"auth": auth}}})
}

// waitFor polls cond every 100 ms until it holds, failing the test after a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// capSysResource is CAP_SYS_RESOURCE's bit in the capability sets of /proc/PID/status.
const capSysResource = 24

// hasCapability reports whether the test process has capability bit in its effective set.
func hasCapability(t *testing.T, bit uint) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			set, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			if err != nil {
				t.Fatalf("/proc/self/status CapEff %q: %v", hex, err)
			}
			return set&(1<<bit) != 0
		}
	}
	t.Fatal("/proc/self/status has no CapEff line")
	return false
}

// sleepCmd keeps a container running and ends it at once on SIGTERM (a plain sleep as PID 1
// ignores the signal, and each stop would wait out its grace period).
const sleepCmd = `trap "exit 0" TERM; sleep 600 & wait`

// logContains reports whether the log at path has a line containing s.
func logContains(t *testing.T, path, s string) bool {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(data), s)
}
