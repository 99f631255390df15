package snapshotter

import (
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/obdproject/obd/internal/facility"
	"github.com/obdproject/obd/internal/testenv"
)

// requireOverlay skips unless the test can mount overlayfs (root, kernel support).
func requireOverlay(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	data, err := os.ReadFile("/proc/filesystems")
	if err != nil || !strings.Contains(string(data), "\toverlay\n") {
		facility.Missing(t, "overlayfs is not available in this kernel")
	}
}

func TestMain(m *testing.M) {
	// The snapshotter logs every device attach at info level, which would drown the test and
	// benchmark output; warnings and errors still show.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	os.Exit(m.Run())
}
