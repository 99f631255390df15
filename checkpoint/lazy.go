package checkpoint

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// lazyDaemon is a running `criu lazy-pages`: it serves one restore's memory through
// userfaultfd and exits once every page has been copied in (or the process has exited).
type lazyDaemon struct {
	cmd  *exec.Cmd
	done chan error
}

// startLazyPages starts `criu lazy-pages` for the image in dir with work as its work dir (the
// restore must use the same, it finds the daemon's socket there) and waits until it is ready:
// it writes a byte to its --status-fd then.
func (c *CRIU) startLazyPages(ctx context.Context, dir, work string, timeout time.Duration) (*lazyDaemon, error) {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	if err := ensureKdatDir(); err != nil {
		return nil, err
	}
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("checkpoint: lazy-pages: %w", err)
	}
	defer statusR.Close()
	logPath := filepath.Join(work, "lazy-pages.log")
	// Not CommandContext: the daemon outlives this call, serving the restored process.
	cmd := exec.Command(c.Path, append([]string{"lazy-pages", "--images-dir", dir, "--work-dir", work,
		"--status-fd", "3"}, c.logArgs(logPath)...)...)
	cmd.Env = criuEnv()
	cmd.ExtraFiles = []*os.File{statusW}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Start()
	statusW.Close()
	if err != nil {
		return nil, fmt.Errorf("checkpoint: lazy-pages: %w", err)
	}
	d := &lazyDaemon{cmd: cmd, done: make(chan error, 1)}
	go func() { d.done <- cmd.Wait() }()
	ready := make(chan error, 1)
	go func() {
		// One byte when ready; EOF when the daemon exits first.
		var b [1]byte
		_, err := statusR.Read(b[:])
		ready <- err
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err = <-ready:
		if err == nil {
			return d, nil
		}
		err = fmt.Errorf("exited before ready")
	case <-timer.C:
		err = fmt.Errorf("not ready after %v", timeout)
	case <-ctx.Done():
		err = ctx.Err()
	}
	d.stop()
	return nil, fmt.Errorf("checkpoint: criu lazy-pages: %w: %s%s", err, strings.TrimSpace(out.String()), logTail(logPath))
}

// stop ends the daemon if it still runs and reaps it.
func (d *lazyDaemon) stop() {
	select {
	case err := <-d.done:
		d.done <- err
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	err := <-d.done
	d.done <- err
}
