package bdd

import (
	"net"
	"syscall"
)

// listenUnixPrivate listens on a unix socket created with mode 0600. The umask is
// process-wide, so no other file may be created concurrently with a looser mode
// expectation; bdd calls this once at start-up.
func listenUnixPrivate(path string) (net.Listener, error) {
	old := syscall.Umask(0o177)
	defer syscall.Umask(old)
	return net.Listen("unix", path)
}
