package checkpoint

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzReadMeta: checkpoint.json may come from a registry. Reading it never panics, fails only
// with ErrBadImage, and what it accepts names only pipes (the ids go on criu's command line).
func FuzzReadMeta(f *testing.F) {
	f.Add([]byte(`{"version": 1, "criu": "4.1.1", "stdio": ["pipe:[1]", "pipe:[2]", "pipe:[3]"]}`))
	f.Add([]byte(`{"version": 1, "stdio": ["pipe:[1]", "pipe:[2]"]}`))
	f.Add([]byte(`{"version": 1, "stdio": ["pipe:[1]", "pipe:[2]", "pipe:[3]", "pipe:[4]"]}`))
	f.Add([]byte(`{"version": 1, "stdio": ["pipe:[1]\n--x", "pipe:[2]", "pipe:[3]"]}`))
	f.Add([]byte(`{"version": 1} {"version": 2}`))
	f.Add([]byte(`{"version": 1, "stdio": ["pipe:[1]", "pipe:[2]", "pipe:[3]"], "uid_base": 100000, "binds": ["/srv", "/opt"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, MetaFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		m, err := readMeta(dir)
		if err != nil {
			if !errors.Is(err, ErrBadImage) {
				t.Fatalf("readMeta: %v, want ErrBadImage", err)
			}
			return
		}
		if m.Version != metaVersion {
			t.Fatalf("accepted version %d", m.Version)
		}
		for fd, id := range m.Stdio {
			if !pipeID.MatchString(id) {
				t.Fatalf("accepted fd %d = %q", fd, id)
			}
		}
		for _, target := range m.Binds {
			if err := checkBindTarget(target); err != nil || m.UIDBase == 0 || len(m.Binds) > maxBinds {
				t.Fatalf("accepted binds %q of uid base %d", m.Binds, m.UIDBase)
			}
		}
	})
}
