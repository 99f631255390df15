package snapshotter

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/pagetrace"
	"github.com/obdproject/obd/tracestore"
)

// warmReaders is how many readers read a page trace in: enough to keep the device's FUSE
// and decoding path busy on both cores while the program's own reads come one at a time.
const warmReaders = 8

// mountedChain is what the snapshotter keeps about a device it mounted (a chain's shared one,
// or one a snapshot asked for): the chain it serves, and its page trace, read in when a shared
// device is mounted.
type mountedChain struct {
	chain  digest.Digest
	pages  pagetrace.Trace // nil: the chain has none, record one when the device goes
	own    bool            // a snapshot's own device: its record replaces the chain's trace
	cancel context.CancelFunc
	done   chan struct{} // closed when the warm-up ends; nil without one
}

// WithPageTraces keeps page traces in dir (a tracestore directory): when a lazy chain's
// shared device is released, the file ranges its containers left in the page cache are
// recorded for the chain unless it has a page trace already; when the chain's device is
// mounted again, they are read in ahead of the container's own reads. A device a snapshot
// asked for (imagelabels.OwnDevice) reads nothing in, and what its container read replaces
// the chain's page trace when it goes.
func WithPageTraces(dir string) Opt {
	return func(c *config) error {
		c.pageTraces = &tracestore.Store{Dir: dir}
		return nil
	}
}

// WithRemoteTraces has the snapshotter use the start traces the registry holds (RemoteTraces):
// a pull's bottom layer starts the image's lookup, and a chain without a local page trace
// reads in the page trace that came with its registry trace, waiting for the chain's lookup.
// The replay of the block trace is the device manager's (WithRemoteTracePrefetch).
func WithRemoteTraces(r *RemoteTraces) Opt {
	return func(c *config) error {
		c.remoteTraces = r
		return nil
	}
}

// startWarmup keeps the chain of the shared device just mounted for snapshot id and, when the
// chain has a page trace (local, else the registry's), reads it in in the background. It
// starts at the mount, which for an image being pulled is during the pull: its reads then
// overlap the pull's round trips rather than the container's create (measured: 35 ms less per
// python start). The caller holds the device's lock.
func (o *Snapshotter) startWarmup(ctx context.Context, id string, layers []RemoteLayer) {
	if o.cfg.pageTraces == nil && o.cfg.remoteTraces == nil {
		return
	}
	chain, err := chainID(layers)
	if err != nil {
		return
	}
	m := &mountedChain{chain: chain}
	if o.cfg.pageTraces != nil {
		m.pages, err = o.cfg.pageTraces.LoadPages(chain)
		if err != nil && !errors.Is(err, tracestore.ErrNoTrace) {
			o.cfg.logger.WarnContext(ctx, "page trace not read in", "id", id, "err", err)
			m.pages = pagetrace.Trace{} // a broken one is not replaced by recording
		}
	}
	if pages, source := o.pageSource(m, layers); pages != nil {
		warmCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		m.cancel, m.done = cancel, make(chan struct{})
		go func() {
			defer close(m.done)
			t, err := pages(warmCtx)
			if err != nil {
				return // no page trace in the registry either
			}
			start := time.Now()
			asked, err := pagetrace.Warm(warmCtx, o.deviceMountPath(id), t, warmReaders)
			o.cfg.logger.InfoContext(ctx, "page trace read in", "id", id, "source", source, "bytes", asked, "took", time.Since(start), "err", err)
		}()
	}
	o.track(id, m)
}

// startRecording keeps the chain of the device snapshot id asked for, so that what its
// container reads becomes the chain's page trace when the device goes (finishWarmup). Nothing
// is read in: the page cache must hold the container's reads alone. Only this process knows:
// a device mounted before a restart of the snapshotter records nothing. The caller holds the
// device's lock.
func (o *Snapshotter) startRecording(ctx context.Context, id string, layers []RemoteLayer) {
	if o.cfg.pageTraces == nil {
		return
	}
	chain, err := chainID(layers)
	if err != nil {
		o.cfg.logger.WarnContext(ctx, "page trace will not be recorded", "id", id, "err", err)
		return
	}
	o.track(id, &mountedChain{chain: chain, own: true})
}

func (o *Snapshotter) track(id string, m *mountedChain) {
	o.mountedMu.Lock()
	o.mounted[id] = m
	o.mountedMu.Unlock()
}

// pageSource says where the page trace of a chain being mounted comes from: its local one,
// else the registry's when RemoteTraces are on; nil when neither can have one.
func (o *Snapshotter) pageSource(m *mountedChain, layers []RemoteLayer) (pages func(context.Context) (pagetrace.Trace, error), source string) {
	switch {
	case len(m.pages) > 0:
		return func(context.Context) (pagetrace.Trace, error) { return m.pages, nil }, "local"
	case m.pages == nil && o.cfg.remoteTraces != nil:
		return func(ctx context.Context) (pagetrace.Trace, error) { return o.cfg.remoteTraces.Pages(ctx, layers) }, "registry"
	}
	return nil, ""
}

// finishWarmup stops the warm-up of snapshot id's device, if one runs (its open files would
// keep the device busy), and, before the device goes, records what its containers read: for
// a snapshot's own device always, for a shared one if the chain has no page trace yet. The
// caller holds the device's lock.
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
	if m.pages != nil || o.cfg.pageTraces == nil {
		return // the chain has a page trace, or they are not kept
	}
	if !m.own {
		// A snapshot's own device may have recorded one since this device was mounted.
		if _, err := os.Stat(o.cfg.pageTraces.PagesPath(m.chain)); err == nil {
			return
		}
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
	o.cfg.logger.InfoContext(ctx, "page trace recorded", "id", id, "own_device", m.own, "ranges", len(pages), "took", time.Since(start))
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
