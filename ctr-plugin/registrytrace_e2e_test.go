package ctrplugin

import (
	"context"
	"io"
	"log"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"

	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/traceartifact"
)

// replayedFromRegistry matches the snapshotter's log line of a finished replay of a registry
// trace.
var replayedFromRegistry = regexp.MustCompile(`msg="trace prefetched".* source=registry `)

// TestE2ERegistryTrace: an image converted and traced on one node, its trace pushed to the
// registry; a second, fresh node (new containerd, bdd with an empty cache, snapshotter with no
// local trace) `nerdctl run`s the image, and bdd finds the registry's trace and the snapshotter
// replays it. Against a registry with the OCI referrers API and one without (the tag schema).
func TestE2ERegistryTrace(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: runs registries, bdd, containerd, the snapshotter and containers")
	}
	testenv.RequireRoot(t)
	skopeo := testenv.Bin(t, "skopeo")
	testenv.Bin(t, "nerdctl")
	ctrObd := buildCtrObd(t)
	plain := testenv.BuildBusyboxImage(t)

	for _, kind := range []struct {
		name      string
		referrers bool
		start     func(t testing.TB) (host string)
	}{
		{"referrers-api", true, func(t testing.TB) string {
			srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.WithReferrersSupport(true), ggcrregistry.Logger(log.New(io.Discard, "", 0))))
			t.Cleanup(srv.Close)
			return strings.TrimPrefix(srv.URL, "http://")
		}},
		{"tag-schema", false, testenv.StartDockerRegistry},
	} {
		t.Run(kind.name, func(t *testing.T) {
			host := kind.start(t)
			plainRef, obdRef := host+"/obdtest/busybox:plain", host+"/obdtest/busybox:obd"
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if out, err := exec.CommandContext(ctx, skopeo, "copy", "--dest-tls-verify=false",
				"oci:"+plain.Layout+":"+plain.Tag, "docker://"+plainRef).CombinedOutput(); err != nil {
				t.Fatalf("skopeo copy: %v\n%s", err, out)
			}

			recorder := startStack(t, ctrObd)
			recorder.ctr(t, "obdconv", "--work-dir", t.TempDir(), "--vsize", "256M", plainRef, obdRef)
			resolver := docker.NewResolver(docker.ResolverOptions{})
			_, image, err := resolver.Resolve(ctx, obdRef)
			if err != nil {
				t.Fatal(err)
			}
			recorder.ctr(t, "rpull", "--trace-dir", t.TempDir(), "--bdd-socket", recorder.bdd.Socket, obdRef)
			out := recorder.ctr(t, "record-trace", "--push", "--trace-dir", t.TempDir(), "--bdd-socket", recorder.bdd.Socket,
				obdRef, filepath.Join(t.TempDir(), "start.trace"), "--", "sh", "-c", startWorkload)
			if !strings.Contains(out, "pushed start trace sha256:") {
				t.Fatalf("record-trace --push output = %q, want a pushed artifact", out)
			}
			if tagged := strings.Contains(out, "referrers tag "+traceartifact.ReferrersTag(image.Digest)); tagged == kind.referrers {
				t.Fatalf("record-trace --push output = %q: the referrers tag used %v, want %v", out, tagged, !kind.referrers)
			}

			fresh := startStack(t, ctrObd, stackOptions{remoteTraces: true})
			out = fresh.ctrd.Nerdctl(t, "--insecure-registry", "--snapshotter", Snapshotter, "run", "--quiet", "--rm", "--net", "none",
				obdRef, "sh", "-c", startWorkload)
			if strings.TrimSpace(out) != "started" {
				t.Fatalf("nerdctl run output = %q", out)
			}
			waitFor(t, "bdd's log of the registry trace", func() bool { return fresh.bdd.LogContains("registry trace found") })
			waitFor(t, "the snapshotter's log of the replay", func() bool { return replayedFromRegistry.MatchString(fresh.snLog.String()) })
			if _, now, err := resolver.Resolve(ctx, obdRef); err != nil || now.Digest != image.Digest {
				t.Fatalf("after the trace was pushed the image is %s (%v), want %s unchanged", now.Digest, err, image.Digest)
			}
		})
	}
}

// waitFor polls cond for up to a minute; the replay of a trace runs in the background and may
// end after the container did.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within a minute", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
