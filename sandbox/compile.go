package sandbox

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/obdproject/obd/internal/deathsig"
	"golang.org/x/sys/unix"
)

// compileTimeout bounds byte-compiling one function's handler code.
const compileTimeout = time.Minute

// compile byte-compiles the handler code once, with the image's python3, into __pycache__
// next to the sources: every sandbox would otherwise compile it again on import (about 1 ms
// for a small handler, measured). No handler code runs: compileall only parses, but the
// image's python3 does, so it runs confined as a sandbox is, with codeDir (handed to the
// sandbox user for it) writable at /srv. A syntax error fails the registration.
func (m *Manager) compile(img *image, codeDir string) error {
	if err := chownTree(codeDir, m.cfg.UIDBase+nobody); err != nil {
		return err
	}
	root, err := cloneTree(img.dir, roAttrs)
	if err != nil {
		return err
	}
	defer root.close()
	code, err := cloneTree(codeDir, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV)
	if err != nil {
		return err
	}
	if err := root.attach("srv", code); err != nil {
		return err
	}
	var out bytes.Buffer
	cmd, err := m.command(confined{root: root, flags: sandboxFlags, stdout: &out, stderr: &out,
		argv: []string{pythonPath, "-I", "-c", "import compileall, sys; sys.exit(not compileall.compile_dir('/srv', quiet=1))"}})
	if err != nil {
		return err
	}
	if err := deathsig.Start(cmd); err != nil {
		return fmt.Errorf("compile handler: %w", err)
	}
	if err := waitOrKill(cmd, compileTimeout); err != nil {
		return fmt.Errorf("compile handler code: %w: %s", err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// chownTree gives every file and directory under dir (symlinks themselves, never followed)
// to uid (and the group of that number).
func chownTree(dir string, uid int) error {
	return filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(path, uid, uid); err != nil {
			return fmt.Errorf("sandbox: code dir: %w", err)
		}
		return nil
	})
}

// waitOrKill waits for cmd, started, to exit; past limit it is killed and reaped.
func waitOrKill(cmd *exec.Cmd, limit time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
		cmd.Process.Kill()
		return <-done
	}
}
