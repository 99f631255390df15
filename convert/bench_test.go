package convert_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/zfile"
)

// benchImage builds (once, cached under OBD_DEPS) the Debian image of
// bench/mkimage.sh and returns its OCI layout.
func benchImage(b *testing.B) string {
	b.Helper()
	out, err := exec.Command("bash", "bench/mkimage.sh").Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		b.Skipf("cannot build the Debian benchmark image (needs root, debootstrap, umoci and the Debian archive): %v %s", err, msg)
	}
	return string(out[:len(out)-1])
}

func skopeo(b *testing.B, args ...string) time.Duration {
	b.Helper()
	start := time.Now()
	cmd := exec.Command("skopeo", append([]string{"copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("skopeo copy %v: %v\n%s", args, err, out)
	}
	return time.Since(start)
}

// BenchmarkConvertDebian converts a real three-layer Debian image (minbase,
// python3, gcc) from one registry to another and reports, against baselines
// measured in the same run: conversion time over `skopeo copy` of the same
// image between the same registries, and converted size (zstd and lz4) over
// the gzip image's size.
func BenchmarkConvertDebian(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root to attach loop devices and mount ext4")
	}
	if _, err := exec.LookPath("skopeo"); err != nil {
		b.Skip("skopeo not installed (apt-get install skopeo): it is the baseline")
	}
	layout := benchImage(b)
	var gzipBytes int64
	{
		var idx ocispec.Index
		readJSON(b, filepath.Join(layout, "index.json"), &idx)
		var man ocispec.Manifest
		readJSON(b, blobPath(layout, idx.Manifests[0].Digest.Encoded()), &man)
		for _, l := range man.Layers {
			gzipBytes += l.Size
		}
	}
	src := testregistry.Start(b, testregistry.Options{})
	dst := testregistry.Start(b, testregistry.Options{})
	skopeo(b, "oci:"+layout+":bench", "docker://"+src.Host+"/debian:bench")
	ctx := context.Background()

	var skopeoTime, convertTime time.Duration
	var zstdBytes, lz4Bytes int64
	var zstdDigest string
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		skopeoTime += skopeo(b, "docker://"+src.Host+"/debian:bench", "docker://"+dst.Host+"/debian:copy")
		for _, algo := range []zfile.Algorithm{zfile.ZSTD, zfile.LZ4} {
			c, err := convert.New(convert.Options{WorkDir: b.TempDir(), Algorithm: algo})
			if err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			res, err := c.Convert(ctx, src.Host+"/debian:bench", dst.Host+"/debian:obd-"+algo.String())
			if err != nil {
				b.Fatal(err)
			}
			if algo == zfile.ZSTD {
				convertTime += time.Since(start)
				zstdBytes = res.LayerBytes
				zstdDigest = res.Descriptor.Digest.String()
			} else {
				lz4Bytes = res.LayerBytes
			}
		}
	}
	b.StopTimer()
	// Reproducibility on a real image: a second conversion from scratch gives
	// the same manifest.
	c, err := convert.New(convert.Options{WorkDir: b.TempDir(), Algorithm: zfile.ZSTD})
	if err != nil {
		b.Fatal(err)
	}
	again, err := c.Convert(ctx, src.Host+"/debian:bench", dst.Host+"/debian:obd-again")
	if err != nil {
		b.Fatal(err)
	}
	if again.Descriptor.Digest.String() != zstdDigest {
		b.Errorf("converting twice gave %s and %s", zstdDigest, again.Descriptor.Digest)
	}
	n := float64(b.N)
	b.ReportMetric(convertTime.Seconds()/n, "convert-zstd-s")
	b.ReportMetric(skopeoTime.Seconds()/n, "skopeo-copy-s")
	b.ReportMetric(convertTime.Seconds()/skopeoTime.Seconds(), "convert/skopeo")
	b.ReportMetric(float64(zstdBytes)/float64(gzipBytes), "zstd/gzip-size")
	b.ReportMetric(float64(lz4Bytes)/float64(gzipBytes), "lz4/gzip-size")
	b.ReportMetric(float64(gzipBytes)/1e6, "gzip-MB")
}
