package bdd

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestListenControl(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "bdd.sock")
	l, err := ListenControl(path)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v (%v), want 0600", st.Mode(), err)
	}
	// A live daemon on the socket must not be displaced.
	if _, err := ListenControl(path); err == nil || !strings.Contains(err.Error(), "another bdd") {
		t.Fatalf("second listener: %v", err)
	}
	// A socket left by a killed daemon is replaced.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l2, err := ListenControl(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l2.Close()
	// Anything else at the path is left alone.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := ListenControl(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("listening over a regular file: %v", err)
	}
}
