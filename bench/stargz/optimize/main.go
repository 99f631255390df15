// Command optimize converts an image in containerd's store to eStargz with prioritized files:
// it runs the image's workload once in a container, records with fanotify which files the run
// opened (stargz-snapshotter's analyzer), and converts every layer with those files placed
// first and marked as the prefetch landmark (its eStargz converter). That is what ctr-remote's
// `image optimize` does; ctr-remote lives in stargz's cmd module, which the Go module proxy
// does not serve, so this main puts the same library packages together. obd's cold-start
// benchmark (bench/coldstart) runs the result as mode estargz-opt, the peer of a start with a
// recorded trace.
//
//	optimize [flags] <source-ref> <target-ref> -- <command> [args...]
//
// The source image must already be in containerd's store (pulled, with its layer blobs); the
// converted image is stored under target-ref, ready for `nerdctl push`.
package main

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images/converter"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/platforms"
	"github.com/containerd/stargz-snapshotter/analyzer"
	"github.com/containerd/stargz-snapshotter/analyzer/fanotify/service"
	"github.com/containerd/stargz-snapshotter/estargz"
	estargzconvert "github.com/containerd/stargz-snapshotter/nativeconverter/estargz"
	"github.com/containerd/stargz-snapshotter/recorder"
	"github.com/containerd/stargz-snapshotter/util/containerdutil"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func main() {
	// The analyzer starts its fanotify watcher as "/proc/self/exe fanotify <dir>" in a new
	// mount namespace (ctr-remote's hidden fanotify command).
	if len(os.Args) == 3 && os.Args[1] == "fanotify" {
		if err := service.Serve(os.Args[2], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "optimize fanotify:", err)
			os.Exit(1)
		}
		return
	}
	address := flag.String("address", "/run/containerd/containerd.sock", "containerd's socket")
	namespace := flag.String("namespace", "default", "containerd namespace holding the source image")
	period := flag.Duration("period", time.Minute, "stop recording (and kill the container) after this long")
	waitLine := flag.String("wait-line", "", "stop recording once the container prints a line containing this")
	recordOut := flag.String("record-out", "", "also write the prioritized files, per layer digest, to this JSON file")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: optimize [flags] <source-ref> <target-ref> -- <command> [args...]")
		flag.PrintDefaults()
	}
	flag.Parse()
	args := flag.Args()
	if len(args) < 4 || args[2] != "--" {
		flag.Usage()
		os.Exit(2)
	}
	o := optimizer{address: *address, namespace: *namespace, period: *period,
		waitLine: *waitLine, recordOut: *recordOut, source: args[0], target: args[1], command: args[3:]}
	if err := o.run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "optimize:", err)
		os.Exit(1)
	}
}

type optimizer struct {
	address, namespace  string
	period              time.Duration
	waitLine, recordOut string
	source, target      string
	command             []string
}

func (o optimizer) run(ctx context.Context) error {
	client, err := containerd.New(o.address)
	if err != nil {
		return fmt.Errorf("connect to containerd at %s: %w", o.address, err)
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, o.namespace)
	ctx, done, err := client.WithLease(ctx)
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	defer done(context.WithoutCancel(ctx))

	// containerd's default snapshotter, as ctr-remote: with a snapshotter named, the
	// analyzer's container (its rootfs a path the analyzer mounted) fails the image config's
	// user lookup, which then wants a snapshot of the container's own.
	aOpts := []analyzer.Option{
		analyzer.WithPeriod(o.period),
		analyzer.WithSpecOpts(o.specOpts),
	}
	if o.waitLine != "" {
		aOpts = append(aOpts, analyzer.WithWaitLineOut(o.waitLine))
	}
	record, err := analyzer.Analyze(ctx, client, o.source, aOpts...)
	if err != nil {
		return fmt.Errorf("analyze %s: %w", o.source, err)
	}
	prioritized, layers, err := o.prioritizedFiles(ctx, client, record)
	if err != nil {
		return err
	}
	if o.recordOut != "" {
		data, err := json.MarshalIndent(prioritized, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.recordOut, data, 0o644); err != nil {
			return err
		}
	}
	entries := make([]layerEntries, len(layers))
	for i, l := range layers {
		if entries[i], err = readEntries(ctx, client.ContentStore(), l); err != nil {
			return err
		}
	}
	dirs := impliedDirs(layers, entries, prioritized)
	for layer, files := range prioritized {
		fmt.Printf("layer %s: %d prioritized files, %d implied directories added\n", layer, len(files), len(dirs[layer]))
	}
	// ctr-remote's defaults: best gzip compression, the default chunk size, OCI media types
	// (Docker's lose the TOC digest annotation), the host's platform only.
	convert := withImpliedDirs(dirs, func(original digest.Digest) converter.ConvertFunc {
		opts := []estargz.Option{estargz.WithCompressionLevel(gzip.BestCompression)}
		if files := prioritized[original]; len(files) > 0 {
			opts = append(opts, estargz.WithPrioritizedFiles(files))
		}
		return estargzconvert.LayerConvertFunc(opts...)
	})
	img, err := converter.Convert(ctx, client, o.target, o.source,
		converter.WithPlatform(platforms.DefaultStrict()),
		converter.WithDockerToOCI(true),
		converter.WithLayerConvertFunc(convert))
	if err != nil {
		return fmt.Errorf("convert %s to %s: %w", o.source, o.target, err)
	}
	fmt.Printf("converted %s to %s (%s)\n", o.source, o.target, img.Target.Digest)
	return nil
}

// specOpts is the analyzer's container spec: its default one (ctr-remote's without flags)
// with the workload's command in place of the image's.
func (o optimizer) specOpts(image containerd.Image, rootfs string) ([]oci.SpecOpts, func() error, error) {
	return []oci.SpecOpts{
		oci.WithDefaultSpec(),
		oci.WithDefaultUnixDevices,
		oci.WithRootFSPath(rootfs),
		oci.WithImageConfig(image),
		oci.WithProcessArgs(o.command...),
	}, func() error { return nil }, nil
}

// prioritizedFiles reads the analyzer's record from the content store: the files the run
// opened, per layer blob of the source image's platform manifest, in first-open order, and
// that manifest's layers.
func (o optimizer) prioritizedFiles(ctx context.Context, client *containerd.Client, record digest.Digest) (map[digest.Digest][]string, []ocispec.Descriptor, error) {
	cs := client.ContentStore()
	src, err := client.ImageService().Get(ctx, o.source)
	if err != nil {
		return nil, nil, err
	}
	manifestDesc, err := containerdutil.ManifestDesc(ctx, cs, src.Target, platforms.DefaultStrict())
	if err != nil {
		return nil, nil, fmt.Errorf("manifest of %s: %w", o.source, err)
	}
	p, err := content.ReadBlob(ctx, cs, manifestDesc)
	if err != nil {
		return nil, nil, err
	}
	var manifest ocispec.Manifest
	if err := json.Unmarshal(p, &manifest); err != nil {
		return nil, nil, fmt.Errorf("manifest of %s: %w", o.source, err)
	}
	ra, err := cs.ReaderAt(ctx, ocispec.Descriptor{Digest: record})
	if err != nil {
		return nil, nil, fmt.Errorf("analyzer record: %w", err)
	}
	defer ra.Close()
	files := map[digest.Digest][]string{}
	seen := map[digest.Digest]map[string]bool{}
	dec := json.NewDecoder(io.NewSectionReader(ra, 0, ra.Size()))
	for {
		var e recorder.Entry
		if err := dec.Decode(&e); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, nil, fmt.Errorf("analyzer record: %w", err)
		}
		if e.LayerIndex == nil || *e.LayerIndex < 0 || *e.LayerIndex >= len(manifest.Layers) ||
			e.ManifestDigest != manifestDesc.Digest.String() {
			continue
		}
		layer := manifest.Layers[*e.LayerIndex].Digest
		if seen[layer] == nil {
			seen[layer] = map[string]bool{}
		}
		if !seen[layer][e.Path] {
			seen[layer][e.Path] = true
			files[layer] = append(files[layer], e.Path)
		}
	}
	if len(files) == 0 {
		layers := make([]string, 0, len(manifest.Layers))
		for _, l := range manifest.Layers {
			layers = append(layers, l.Digest.String())
		}
		sort.Strings(layers)
		return nil, nil, fmt.Errorf("the run of %q opened no file of the image's layers %v", o.command, layers)
	}
	return files, manifest.Layers, nil
}
