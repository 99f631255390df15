package sandbox

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// compileTimeout bounds byte-compiling one function's handler code.
const compileTimeout = time.Minute

// compile byte-compiles the handler code once, with the image's python3, into __pycache__
// next to the sources: every sandbox would otherwise compile it again on import (about 1 ms
// for a small handler, measured). No handler code runs: compileall only parses. A syntax
// error fails the registration. id names the root it runs in.
func (m *Manager) compile(img *image, codeDir string, id int) error {
	root, err := mountRoot(filepath.Join(m.cfg.StateDir, "sandboxes", "compile-"+strconv.Itoa(id)), img.dir,
		[]bind{{src: codeDir, target: "srv", writable: true}})
	if err != nil {
		return err
	}
	defer root.unmount()
	cmd := &exec.Cmd{
		Path:        pythonPath,
		Args:        []string{"python3", "-I", "-c", "import compileall, sys; sys.exit(not compileall.compile_dir('/srv', quiet=1))"},
		Env:         []string{"LANG=C.UTF-8"},
		Dir:         "/",
		SysProcAttr: &syscall.SysProcAttr{Chroot: root.dir, Cloneflags: sandboxFlags, Pdeathsig: syscall.SIGKILL},
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := m.netns.start(cmd.Start); err != nil {
		return fmt.Errorf("compile handler: %w", err)
	}
	if err := waitOrKill(cmd, compileTimeout); err != nil {
		return fmt.Errorf("compile handler code: %w: %s", err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
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
