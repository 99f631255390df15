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
// serves, and its page trace, read in when the device is mounted.
type mountedChain struct {
	chain  digest.Digest
	pages  pagetrace.Trace // nil: the chain has none, record one when the device goes
	cancel context.CancelFunc
	done   chan struct{} // closed when the warm-up ends; nil without one
}

// WithPageTraces keeps page traces in dir (a tracestore directory): when a lazy chain's
// shared device is released, the file ranges its containers left in the page cache are
// recorded for the chain unless it has a page trace already; when the chain's device is
// mounted again, they are read in ahead of the container's own reads.
func WithPageTraces(dir string) Opt {
	return func(c *config) error {
		c.pageTraces = &tracestore.Store{Dir: dir}
		return nil
	}
}

// startWarmup keeps the chain of the shared device just mounted for snapshot id and, when the
// chain has a page trace, reads it in in the background. It starts at the mount, which for an
// image being pulled is during the pull: its reads then overlap the pull's round trips rather
// than the container's create (measured: 35 ms less per python start). The caller holds the
// device's lock.
func (o *Snapshotter) startWarmup(ctx context.Context, id string, layers []RemoteLayer) {
	if o.cfg.pageTraces == nil {
		return
	}
	chain, err := chainID(layers)
	if err != nil {
		return
	}
	m := &mountedChain{chain: chain}
	if m.pages, err = o.cfg.pageTraces.LoadPages(chain); err != nil && !errors.Is(err, tracestore.ErrNoTrace) {
		o.cfg.logger.WarnContext(ctx, "page trace not read in", "id", id, "err", err)
		m.pages = pagetrace.Trace{} // a broken one is not replaced by recording
	}
	if len(m.pages) > 0 {
		warmCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		m.cancel, m.done = cancel, make(chan struct{})
		go func() {
			defer close(m.done)
			start := time.Now()
			asked, err := pagetrace.Warm(warmCtx, o.deviceMountPath(id), m.pages, warmReaders)
			o.cfg.logger.InfoContext(ctx, "page trace read in", "id", id, "bytes", asked, "took", time.Since(start), "err", err)
		}()
	}
	o.mountedMu.Lock()
	o.mounted[id] = m
	o.mountedMu.Unlock()
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
		o.cfg.logger.WarnContext(ctx, "page trace not recorded", "id", id, "err", err)
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
