package snapshotter

import (
	"os"
	"strings"
	"testing"

	"github.com/obdproject/obd/internal/testenv"
)

// requireOverlay skips unless the test can mount overlayfs (root, kernel support).
func requireOverlay(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	data, err := os.ReadFile("/proc/filesystems")
	if err != nil || !strings.Contains(string(data), "\toverlay\n") {
		t.Skip("overlayfs is not available in this kernel")
	}
}
