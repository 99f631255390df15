package once

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obdproject/obd/internal/testenv"
)

// busyboxRoot returns a root filesystem with busybox in /bin and a user database naming the
// user app (1000) in the groups app (1000) and extra (2000).
func busyboxRoot(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t)
	root := t.TempDir()
	if out, err := exec.Command("cp", "-a", testenv.BuildBusyboxImage(t).RootFS+"/.", root).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
		"etc/group":  "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
	}
	for name, content := range files {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func run(t *testing.T, root string, c Command) (string, error) {
	t.Helper()
	var out bytes.Buffer
	c.Root, c.Output = root, &out
	if c.Scratch == "" {
		c.Scratch = filepath.Join(t.TempDir(), "scratch")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := Run(ctx, c)
	if _, statErr := os.Stat(c.Scratch); !errors.Is(statErr, os.ErrNotExist) {
		t.Errorf("scratch %s left behind: %v", c.Scratch, statErr)
	}
	return out.String(), err
}

// TestRunIsolates: the command is PID 1 of its own namespace, with its own hostname, no
// network but loopback, a /proc and the host's null device; what it writes stays out of the
// image.
func TestRunIsolates(t *testing.T) {
	root := busyboxRoot(t)
	out, err := run(t, root, Command{Args: []string{"sh", "-c", `echo pid=$$; cat /proc/sys/kernel/hostname; cat /proc/net/dev | wc -l; echo hidden > /dev/null; echo written > /bin/new; cat /bin/new; pwd`},
		Env: []string{"PATH=/bin"}, Dir: "/work/dir"})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, out)
	}
	// /proc/net/dev: two header lines and lo, nothing of the host's interfaces.
	if want := "pid=1\nobd-sandbox\n3\nwritten\n/work/dir\n"; out != want {
		t.Fatalf("output = %q, want %q", out, want)
	}
	if _, err := os.Stat(filepath.Join(root, "bin", "new")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the command's write reached the image: %v", err)
	}

	// Its mount namespace holds its root, /proc and /dev, none of the host's mounts; its
	// bounding set only a container's default capabilities, so root cannot mount.
	out, err = run(t, root, Command{Args: []string{"sh", "-c", `cat /proc/self/mountinfo | while read id parent dev root point rest; do echo $point; done; cat /proc/self/status | while read k v; do [ $k = CapBnd: ] && echo $v; done; mount -t tmpfs none /bin && echo mounted; true`},
		Env: []string{"PATH=/bin"}})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, out)
	}
	var wantMask uint64
	for _, c := range keptCapabilities {
		wantMask |= 1 << c
	}
	want := "/\n/proc\n/dev\n"
	for _, d := range hostDevices {
		want += "/dev/" + d + "\n"
	}
	want += "/dev/shm\n" + fmt.Sprintf("%016x", wantMask) + "\n"
	if !strings.HasPrefix(out, want) || !strings.Contains(out, "permission denied") || strings.Contains(out, "mounted\n") {
		t.Fatalf("mounts, bounding set and a mount as root:\n%s\nwant\n%s(and the mount refused)", out, want)
	}
}

// TestRunAsImageUser: a user named by the image config runs with its ids and groups from the
// image's own user database; without one, root.
func TestRunAsImageUser(t *testing.T) {
	root := busyboxRoot(t)
	ids := `cat /proc/self/status | while read k v; do case $k in Uid:|Gid:|Groups:) echo $k $v;; esac; done`
	for _, tc := range []struct{ user, want string }{
		{"", "Uid: 0 0 0 0\nGid: 0 0 0 0\nGroups:\n"},
		{"app", "Uid: 1000 1000 1000 1000\nGid: 1000 1000 1000 1000\nGroups: 2000\n"},
		{"4000:5000", "Uid: 4000 4000 4000 4000\nGid: 5000 5000 5000 5000\nGroups:\n"},
	} {
		out, err := run(t, root, Command{Args: []string{"sh", "-c", ids}, Env: []string{"PATH=/bin"}, User: tc.user})
		if err != nil {
			t.Fatalf("user %q: %v\n%s", tc.user, err, out)
		}
		if norm := strings.Join(strings.Fields(strings.ReplaceAll(out, "\n", " | ")), " "); norm != strings.Join(strings.Fields(strings.ReplaceAll(tc.want, "\n", " | ")), " ") {
			t.Fatalf("user %q: ids %q, want %q", tc.user, out, tc.want)
		}
	}
	if _, err := run(t, root, Command{Args: []string{"true"}, User: "nobody-here"}); err == nil || !strings.Contains(err.Error(), "nobody-here") {
		t.Fatalf("a user the image does not know: err = %v, want it named", err)
	}
}

// TestRunFailures: a non-zero exit, a command that is not there and a command that outlives
// its context are errors that say so, with the end of the output.
func TestRunFailures(t *testing.T) {
	root := busyboxRoot(t)
	_, err := run(t, root, Command{Args: []string{"sh", "-c", "echo the cause; exit 3"}, Env: []string{"PATH=/bin"}})
	var exit *ExitError
	if !errors.As(err, &exit) || exit.Code != 3 || !strings.Contains(err.Error(), "the cause") {
		t.Fatalf("exit 3: err = %v, want an ExitError with status 3 and the output", err)
	}
	_, err = run(t, root, Command{Args: []string{"no-such-command"}, Env: []string{"PATH=/bin"}})
	if !errors.As(err, &exit) || exit.Code != initFailed || !strings.Contains(err.Error(), "no-such-command: command not found") {
		t.Fatalf("a missing command: err = %v, want status %d naming it", err, initFailed)
	}
	if _, err := run(t, root, Command{}); err == nil {
		t.Fatal("no command: err = nil")
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	scratch := filepath.Join(t.TempDir(), "scratch")
	err = Run(ctx, Command{Root: root, Args: []string{"sh", "-c", "sleep 600 & sleep 600"}, Env: []string{"PATH=/bin"}, Scratch: scratch})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a command that outlives its context: err = %v, want DeadlineExceeded", err)
	}
}
