package ctrplugin

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
)

// pagesFromRegistry matches the snapshotter's log line of a page trace from the registry read
// in.
var pagesFromRegistry = regexp.MustCompile(`msg="page trace read in".* source=registry bytes=[1-9]`)

// TestE2EConvertRecordTraceReplays: `obd convert --record-trace` converts an image into a
// registry and records its start there with a bdd and no containerd; a fresh node (new
// containerd, bdd with an empty cache, snapshotter with no local trace) `nerdctl run`s the
// image and replays that trace, blocks and pages, from the registry.
func TestE2EConvertRecordTraceReplays(t *testing.T) {
	requireStackFacilities(t)
	testenv.Bin(t, "nerdctl")
	obd, ctrObd := buildCommand(t, "obd"), buildCtrObd(t)
	registry := testregistry.Start(t, testregistry.Options{})
	plain := testenv.BuildBusyboxImage(t)
	obdRef := registry.Host + "/obdtest/busybox:obd"

	recorder := testenv.StartBDD(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, obd, "convert", "--work-dir", t.TempDir(), "--vsize", "256M",
		"--record-trace", "--bdd-socket", recorder.Socket,
		"oci:"+plain.Layout+":"+plain.Tag, obdRef, "--", "sh", "-c", startWorkload).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "start trace sha256:") {
		t.Fatalf("obd convert --record-trace: %v\n%s", err, out)
	}

	fresh := startStack(t, ctrObd, stackOptions{remoteTraces: true})
	run := fresh.ctrd.Nerdctl(t, "--insecure-registry", "--snapshotter", Snapshotter, "run", "--quiet", "--rm", "--net", "none",
		obdRef, "sh", "-c", startWorkload)
	if strings.TrimSpace(run) != "started" {
		t.Fatalf("nerdctl run output = %q", run)
	}
	waitFor(t, "bdd's log of the registry trace", func() bool { return fresh.bdd.LogContains("registry trace found") })
	waitFor(t, "the snapshotter's log of the replay", func() bool { return replayedFromRegistry.MatchString(fresh.snLog.String()) })
	waitFor(t, "the snapshotter's log of the page warm-up", func() bool { return pagesFromRegistry.MatchString(fresh.snLog.String()) })
}
