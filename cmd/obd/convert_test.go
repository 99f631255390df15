package main

import (
	"context"
	"encoding/json"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/imagelabels"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/pagetrace"
	"github.com/obdproject/obd/traceartifact"
)

// TestConvertRecordTrace converts an image into a real registry with --record-trace against a
// real bdd: the image's start runs once in a sandbox, and its trace is an artifact of the
// converted image that Select finds, with the ranges and files the start read. A command that
// fails fails the conversion, shows its output and pushes nothing; one that runs past
// --record-timeout is stopped and its trace kept.
func TestConvertRecordTrace(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: converts an image and runs it on a bdd device")
	}
	b := testenv.StartBDD(t)
	registry := testregistry.Start(t, testregistry.Options{})
	plain := testenv.BuildBusyboxImage(t, testenv.WithCmd("sh", "-c", "cat /bin/busybox > /dev/null; echo started"))
	src, dst := "oci:"+plain.Layout+":"+plain.Tag, registry.Host+"/obdtest/busybox:obd"
	convertArgs := func(extra ...string) []string {
		return append([]string{"convert", "--work-dir", filepath.Join(t.TempDir(), "work"), "--vsize", "256M",
			"--record-trace", "--bdd-socket", b.Socket}, extra...)
	}

	// Usage errors come before any conversion.
	if _, err := runObd(t, "convert", src, dst, "--", "true"); err == nil || !strings.Contains(err.Error(), "give --record-trace") {
		t.Fatalf("a command without --record-trace: err = %v", err)
	}
	if _, err := runObd(t, convertArgs(src, "oci:"+t.TempDir()+":x")...); err == nil || !strings.Contains(err.Error(), "give a registry reference") {
		t.Fatalf("--record-trace into a layout: err = %v", err)
	}

	out, err := runObd(t, convertArgs(src, dst)...)
	if err != nil {
		t.Fatalf("convert --record-trace: %v\n%s", err, out)
	}
	if !strings.Contains(out, "start trace sha256:") {
		t.Fatalf("convert --record-trace output = %q, want the pushed start trace", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resolver := docker.NewResolver(docker.ResolverOptions{})
	img := convertedImage(ctx, t, resolver, dst)
	artifacts, err := traceartifact.List(ctx, resolver, dst, img.Manifest.Digest)
	if err != nil || len(artifacts) != 1 {
		t.Fatalf("start traces of %s: %v, %v; want the one recorded", dst, artifacts, err)
	}
	selected, err := traceartifact.Select(ctx, resolver, dst, img, math.MaxInt64)
	if err != nil {
		t.Fatal(err)
	}
	trace, err := blocktrace.Decode(selected.Blocks)
	if err != nil {
		t.Fatal(err)
	}
	// The start read all of busybox (about a megabyte compressed) from the one layer.
	if len(trace.Blobs) != 1 || trace.Blobs[0].Digest != img.Layers[0].Digest || selected.Summary.Bytes < img.Layers[0].Size/2 {
		t.Fatalf("trace %s covers %d blobs, %d bytes; want most of the layer %s (%d bytes)",
			selected.Descriptor.Digest, len(trace.Blobs), selected.Summary.Bytes, img.Layers[0].Digest, img.Layers[0].Size)
	}
	pages, err := pagetrace.Decode(selected.Pages)
	if err != nil || len(pages) == 0 || pages[0].Path != "bin/busybox" {
		t.Fatalf("page trace %v (%v), want bin/busybox", pages, err)
	}

	// A failing command: the conversion fails with its output, no trace is pushed and the
	// destination's tag is not set.
	failing := registry.Host + "/obdtest/busybox:failing"
	_, err = runObd(t, convertArgs(src, failing, "--", "sh", "-c", "echo broken start >&2; exit 7")...)
	if err == nil || !strings.Contains(err.Error(), "exited with status 7") || !strings.Contains(err.Error(), "broken start") {
		t.Fatalf("a failing command: err = %v, want its status and output", err)
	}
	t.Logf("a failing command: %v", err)
	if _, desc, err := resolver.Resolve(ctx, failing); !errdefs.IsNotFound(err) {
		t.Fatalf("after a failed recording %s resolves to %s (%v), want no such tag", failing, desc.Digest, err)
	}
	// A server: stopped at the timeout, its trace kept. (Its own tag: conversions of one
	// source some seconds apart are not always byte for byte the same.)
	server := registry.Host + "/obdtest/busybox:server"
	out, err = runObd(t, convertArgs(src, server, "--record-timeout", "3s", "--", "sh", "-c", "cat /bin/busybox > /dev/null; sleep 600")...)
	if err != nil || !strings.Contains(out, "start trace sha256:") {
		t.Fatalf("a command past --record-timeout: %v, output %q; want its trace pushed", err, out)
	}
	serverImg := convertedImage(ctx, t, resolver, server)
	artifacts, err = traceartifact.List(ctx, resolver, server, serverImg.Manifest.Digest)
	if err != nil || len(artifacts) == 0 || !strings.Contains(artifacts[0].Annotations[traceartifact.AnnotationCommand], "sleep 600") {
		t.Fatalf("start traces of the stopped run's image: %v (%v), want the stopped run's newest", artifacts, err)
	}
}

// convertedImage returns the manifest of the one-platform image at ref and its layer blobs.
func convertedImage(ctx context.Context, t *testing.T, resolver remotes.Resolver, ref string) traceartifact.Image {
	t.Helper()
	_, desc, err := resolver.Resolve(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if !images.IsManifestType(desc.MediaType) {
		t.Fatalf("%s is a %s, want a manifest", ref, desc.MediaType)
	}
	fetcher, err := resolver.Fetcher(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := fetcher.Fetch(ctx, desc)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var manifest ocispec.Manifest
	if err := json.NewDecoder(rc).Decode(&manifest); err != nil {
		t.Fatal(err)
	}
	img := traceartifact.Image{Manifest: desc}
	for _, l := range manifest.Layers {
		img.Layers = append(img.Layers, ocispec.Descriptor{Digest: digest.Digest(l.Annotations[imagelabels.BlobDigest]), Size: l.Size})
	}
	return img
}
