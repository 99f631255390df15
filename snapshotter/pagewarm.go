package snapshotter

import (
	"context"
	"errors"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/pagetrace"
	"github.com/obdproject/obd/tracestore"
)

// warmReaders is how many readers read a page trace in: enough to keep the device's FUSE
// and decoding path busy on both cores while the program's own reads come one at a time.
const warmReaders = 8

// mountedChain is what the snapshotter keeps about a shared device it mounted: the chain it
// serves, and its page trace, read in once a container or view is created on the device.
type mountedChain struct {
	chain  digest.Digest
	pages  pagetrace.Trace // nil: the chain has none, record one when the device goes
	cancel context.CancelFunc
	done   chan struct{} // closed when the warm-up ends; nil until it starts
}

// WithPageTraces keeps page traces in dir (a tracestore directory): when a lazy chain's
// shared device is released, the file ranges its containers left in the page cache are
// recorded for the chain unless it has a page trace already; when a container is next
// created on the chain's device, they are read in ahead of the container's own reads.
func WithPageTraces(dir string) Opt {
	return func(c *config) error {
		c.pageTraces = &tracestore.Store{Dir: dir}
		return nil
	}
}

// noteMounted keeps the chain and page trace of the shared device just mounted for snapshot
// id. The caller holds the device's lock.
func (o *Snapshotter) noteMounted(ctx context.Context, id string, layers []RemoteLayer) {
	if o.cfg.pageTraces == nil {
		return
	}
	blobs := make([]digest.Digest, len(layers))
	for i, l := range layers {
		blobs[i] = l.Digest
	}
	chain, err := tracestore.ChainID(blobs)
	if err != nil {
		return
	}
	m := &mountedChain{chain: chain}
	if m.pages, err = o.cfg.pageTraces.LoadPages(chain); err != nil && !errors.Is(err, tracestore.ErrNoTrace) {
		o.cfg.logger.WarnContext(ctx, "page trace not read in", "id", id, "error", err)
		m.pages = pagetrace.Trace{} // a broken one is not replaced by recording
	}
	o.mountedMu.Lock()
	o.mounted[id] = m
	o.mountedMu.Unlock()
}

// startWarmup reads the page trace of snapshot id's device in, in the background, unless it
// has none or its warm-up has started. It waits for the first container or view rather than
// the mount: a device attached ahead of use during a pull would compete with the pull.
func (o *Snapshotter) startWarmup(ctx context.Context, id string) {
	o.mountedMu.Lock()
	defer o.mountedMu.Unlock()
	m := o.mounted[id]
	if m == nil || len(m.pages) == 0 || m.done != nil {
		return
	}
	warmCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.cancel, m.done = cancel, make(chan struct{})
	go func() {
		defer close(m.done)
		start := time.Now()
		asked, err := pagetrace.Warm(warmCtx, o.deviceMountPath(id), m.pages, warmReaders)
		o.cfg.logger.InfoContext(ctx, "page trace read in", "id", id, "bytes", asked, "took", time.Since(start), "error", err)
	}()
}

// finishWarmup stops the warm-up of snapshot id's device, if one runs (its open files would
// keep the device busy), and, before the device goes, records what its containers read if
// the chain has no page trace yet. The caller holds the device's lock.
func (o *Snapshotter) finishWarmup(ctx context.Context, id string) {
	o.mountedMu.Lock()
	m := o.mounted[id]
	delete(o.mounted, id)
	o.mountedMu.Unlock()
	if m == nil {
		return
	}
	if m.done != nil {
		m.cancel()
		<-m.done
	}
	if m.pages != nil {
		return // the chain has a page trace
	}
	start := time.Now()
	pages, err := pagetrace.Record(ctx, o.deviceMountPath(id))
	if err == nil && len(pages) > 0 {
		err = o.cfg.pageTraces.SavePages(m.chain, pages)
	}
	if err != nil {
		o.cfg.logger.WarnContext(ctx, "page trace not recorded", "id", id, "error", err)
		return
	}
	o.cfg.logger.InfoContext(ctx, "page trace recorded", "id", id, "ranges", len(pages), "took", time.Since(start))
}

// stopWarmups ends every warm-up, for Close.
func (o *Snapshotter) stopWarmups() {
	o.mountedMu.Lock()
	defer o.mountedMu.Unlock()
	for _, m := range o.mounted {
		if m.done != nil {
			m.cancel()
			<-m.done
		}
	}
}
