package bddclient

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestClientsLinkNoDaemon: bdd's clients link bddclient, not the daemon's packages. ctr-plugin
// links the block-device library through convert, which mounts images it builds, so only the
// daemon and the fetcher are barred from it.
func TestClientsLinkNoDaemon(t *testing.T) {
	gocmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list dependencies with")
	}
	daemon := regexp.MustCompile(`^github\.com/obdproject/obd/(bdd|remotefetch)(/|$)`)
	devices := regexp.MustCompile(`^github\.com/obdproject/obd/blockdev(/|$)`)
	for _, c := range []struct {
		pkg        string
		blockdevOK bool
	}{
		{".", false},
		{"../snapshotter", false},
		{"../cmd/overlaybd-snapshotter", false},
		{"../cmd/obd-lambda", false},
		{"../sandbox/bddrootfs", false},
		{"../ctr-plugin", true},
	} {
		out, err := exec.Command(gocmd, "list", "-deps", c.pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", c.pkg, err)
		}
		for dep := range strings.Lines(string(out)) {
			dep = strings.TrimSpace(dep)
			if daemon.MatchString(dep) || (!c.blockdevOK && devices.MatchString(dep)) {
				t.Errorf("%s links %s", c.pkg, dep)
			}
		}
	}
}
