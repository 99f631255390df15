package coldstart

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// buildSOCIIndex builds the SOCI index of repo's gzip image with bench/soci/index and pushes it
// as repo:soci (an OCI index of the image's manifest, annotated with the SOCI index's digest,
// and the SOCI index; the layers stay the gzip image's). Each run, as obd index is, so its build
// time is in the log. With a min layer size of 0 every layer gets a zTOC (SOCI's default,
// 10 MiB, leaves smaller layers to be pulled whole), as obd index indexes every layer.
func (h *harness) buildSOCIIndex(t *testing.T, ctx context.Context, repo string) {
	start := time.Now()
	out := h.command(t, ctx, filepath.Join(h.benchDir, "bin", "soci-index"), "-min-layer-size", "0",
		"-span-size", strconv.FormatInt(*flagSOCISpan, 10), "-work-dir", t.TempDir(),
		repo+":gzip", repo+":"+imageTag(Cell{Mode: ModeSOCI}))
	t.Logf("soci-index %s:gzip took %s: %s", repo, time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
}

// checkSOCILazy checks that a finished trial of mode soci (node directory dir) started lazily:
// the SOCI snapshotter mounted every layer of the image over its zTOC, pulling none whole, and
// fewer bytes came through the relay than the image's layers hold.
func (h *harness) checkSOCILazy(t *testing.T, dir string, c Cell, fetched int64) error {
	f, err := os.Open(filepath.Join(dir, "soci.log"))
	if err != nil {
		return err
	}
	defer f.Close()
	prepared, err := ReadSOCIPrepared(f)
	if err != nil {
		return err
	}
	layers := h.imageLayers(t, imageRepo(c), imageTag(c))
	if err := prepared.Lazy(len(layers)); err != nil {
		return err
	}
	var size int64
	for _, l := range layers {
		size += l.Size
	}
	if fetched >= size {
		return fmt.Errorf("SOCI fetched %s, no less than the image's layers (%s): not lazy", mib(fetched), mib(size))
	}
	return nil
}
