package sandbox

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// emptyNetns is one network namespace with nothing in it (loopback down), created once and
// shared by every sandbox: they cannot reach the host network, and no sandbox pays for
// creating a namespace. Network namespaces are per thread, so processes are started from an
// OS thread that has temporarily joined it.
type emptyNetns struct {
	host, empty int // namespace fds
}

func newEmptyNetns() (*emptyNetns, error) {
	host, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("sandbox: open host netns: %w", err)
	}
	n := &emptyNetns{host: host, empty: -1}
	err = n.onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("sandbox: unshare netns: %w", err)
		}
		n.empty, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		return err
	})
	if err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// onThread runs fn on a locked OS thread and puts the thread back into the host namespace
// afterwards. A thread that cannot be put back stays locked, so the runtime retires it.
func (n *emptyNetns) onThread(fn func() error) error {
	runtime.LockOSThread()
	err := fn()
	if serr := unix.Setns(n.host, unix.CLONE_NEWNET); serr != nil {
		return fmt.Errorf("sandbox: return to host netns: %w", serr)
	}
	runtime.UnlockOSThread()
	return err
}

// start runs start (an exec.Cmd's Start) so that the new process is in the empty namespace.
func (n *emptyNetns) start(start func() error) error {
	return n.onThread(func() error {
		if err := unix.Setns(n.empty, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("sandbox: enter empty netns: %w", err)
		}
		return start()
	})
}

// Close releases the namespace fds; the namespace goes away with its last process.
func (n *emptyNetns) Close() error {
	if n.empty >= 0 {
		unix.Close(n.empty)
	}
	return unix.Close(n.host)
}
