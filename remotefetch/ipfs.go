package remotefetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/obdproject/obd/ipfsnode"
)

// Peer-to-peer reads through IPFS (README "Peer-to-peer through IPFS"). A blob whose descriptor
// names it by an ipfs://<CID> URL (WithIPFS) and that has a range table is read first through
// the node's own IPFS gateway (kubo), which fetches the blocks from whichever peers hold them,
// with Range requests on /ipfs/<CID>. The gateway is as untrusted as a peer: every range it
// returns passes the range table's check like any other (verify.go), and the registry stays
// the fallback:
//
//   - A gateway that sends no response headers within IPFSOptions.Wait (it finds no peer with
//     the CID: kubo then searches until its own timeout), answers with an error, or breaks
//     off a body (stalls until the watchdog ends it: the peer went away), is passed
//     over by this blob for ipfsMissAvoid, doubling with each miss in a row up to
//     ipfsMissAvoidMax (a blob no peer holds costs a read the wait that rarely); the read goes
//     to the registry at once. An answer resets the doubling.
//   - Bytes from the gateway that fail their check make the blob pass it over for
//     ipfsDistrust: no retry of that read asks it again.
//
// A node is a peer too: once a blob is whole in the cache and matches its digest, the Fetcher
// adds it to the node's IPFS (IPFSOptions.API) with the convention's parameters, checks that
// the node computed the CID the descriptor names, and the node serves it to its peers from
// then on.
const (
	ipfsMissAvoid    = 10 * time.Second
	ipfsMissAvoidMax = 160 * time.Second
	ipfsDistrust     = time.Minute
)

// IPFSOptions configure reads through a local IPFS node. The zero value reads nothing
// through IPFS.
type IPFSOptions struct {
	// Gateway is the node's HTTP gateway, e.g. http://127.0.0.1:8080; "" = no IPFS reads.
	Gateway string
	// API is the node's RPC API, e.g. http://127.0.0.1:5001, through which the blobs this
	// node holds whole are added so its peers can read them; "" = this node only reads.
	API string
	// Wait bounds the gateway's time to answer a request with headers; default 2 s.
	Wait time.Duration
}

// WithIPFS says that the blob was added to IPFS as cid (the ipfs://<CID> URL of its
// descriptor), so a Fetcher with an IPFS gateway reads it through the gateway first. It is
// used only for a blob opened WithRangeTable, whose every range is checked.
func WithIPFS(cid string) OpenOption {
	return func(o *openOptions) { o.ipfs = cid }
}

// errIPFSSlow cancels a gateway request that got no headers within IPFSOptions.Wait.
var errIPFSSlow = errors.New("the IPFS gateway did not answer in time (no peer has the blob?)")

// ipfsNode is a Fetcher's local IPFS node.
type ipfsNode struct {
	gateway *url.URL
	client  *http.Client
	api     *ipfsnode.Client // nil: the node does not add blobs
	wait    time.Duration
	metrics *metrics // the Fetcher's
}

func newIPFSNode(o IPFSOptions, maxConns int) (*ipfsNode, error) {
	if o.Gateway == "" {
		if o.API != "" {
			return nil, errors.New("remotefetch: IPFS API without a gateway")
		}
		return nil, nil
	}
	gw, err := ipfsnode.CheckEndpoint(o.Gateway)
	if err != nil {
		return nil, fmt.Errorf("remotefetch: IPFS gateway: %w", err)
	}
	n := &ipfsNode{gateway: gw, wait: o.Wait,
		client: &http.Client{Transport: &http.Transport{MaxConnsPerHost: maxConns, IdleConnTimeout: time.Minute}}}
	if n.wait <= 0 {
		n.wait = 2 * time.Second
	}
	if o.API != "" {
		if n.api, err = ipfsnode.NewClient(o.API); err != nil {
			return nil, fmt.Errorf("remotefetch: %w", err)
		}
	}
	return n, nil
}

// ipfsBlob is one blob's reads through the node: its CID and when it is passed over.
type ipfsBlob struct {
	node *ipfsNode
	cid  string

	mu     sync.Mutex
	until  time.Time // passed over until then
	misses int       // misses in a row
}

func (b *ipfsBlob) skipped() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return time.Now().Before(b.until)
}

func (b *ipfsBlob) avoid(d time.Duration) {
	b.mu.Lock()
	b.until = time.Now().Add(d)
	b.mu.Unlock()
}

// missed passes the gateway over after a miss, for longer after each miss in a row, and
// returns for how long.
func (b *ipfsBlob) missed() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	d := min(ipfsMissAvoid<<min(b.misses, 8), ipfsMissAvoidMax)
	b.until = time.Now().Add(d)
	b.misses++
	return d
}

// answered resets the doubling of missed.
func (b *ipfsBlob) answered() {
	b.mu.Lock()
	b.misses = 0
	b.mu.Unlock()
}

// getFromIPFS GETs [off, off+n) of the blob from the gateway, giving up on it when no
// headers come within the node's wait.
func (r *remote) getFromIPFS(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	b := r.ipfs
	u := *b.node.gateway
	u.Path = ipfsnode.GatewayPath(b.cid)
	gctx, cancel := context.WithCancelCause(ctx)
	req, err := http.NewRequestWithContext(gctx, http.MethodGet, u.String(), nil)
	if err != nil {
		cancel(nil)
		return nil, err
	}
	setRange(req, off, n)
	timer := time.AfterFunc(b.node.wait, func() { cancel(errIPFSSlow) })
	resp, err := b.node.client.Do(req)
	if !timer.Stop() && err == nil {
		resp.Body.Close() // the headers came as the timer fired: treat it as slow
		err = errIPFSSlow
	}
	if err != nil {
		cancel(nil)
		if errors.Is(context.Cause(gctx), errIPFSSlow) {
			err = errIPFSSlow
		}
		return nil, fmt.Errorf("remotefetch: IPFS %s: %w", b.cid, err)
	}
	body, err := r.checkResponse(resp, &u, off, n)
	if err != nil {
		cancel(nil)
		return nil, err
	}
	rb := body.(rangeBody)
	rb.from = "IPFS gateway " + u.Host
	rb.Reader = &peerReader{r: rb.Reader, blob: b}
	rb.closer = cancelOnClose{nil, rb.closer, cancel}
	return rb, nil
}

// peerReader is a gateway's response body: a body that breaks off (the stall watchdog
// cancelled it, the peer went away) counts as a miss, so the retry reads from the registry.
type peerReader struct {
	r    io.Reader
	blob *ipfsBlob
}

func (p *peerReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if err != nil && !errors.Is(err, io.EOF) {
		p.blob.missed()
	}
	return n, err
}

// getPeer tries the gateway first, unless this blob passes it over for now; on failure it
// passes it over and returns nil, so the caller asks the registry.
func (r *remote) getPeer(ctx context.Context, off, n int64) io.ReadCloser {
	if r.ipfs == nil || r.ipfs.skipped() {
		return nil
	}
	body, err := r.getFromIPFS(ctx, off, n)
	if err != nil {
		r.ipfs.node.metrics.ipfsPassed.Inc()
		r.ipfs.missed()
		if r.log != nil {
			r.log.Debug("remotefetch: IPFS read failed; reading from the registry", "cid", r.ipfs.cid, "err", err)
		}
		return nil
	}
	r.ipfs.node.metrics.ipfsServed.Inc()
	r.ipfs.answered()
	return body
}

// distrustPeer makes the blob pass the gateway over after bytes failed their check: they may
// have come from it.
func (r *remote) distrustPeer(err error) {
	if r.ipfs != nil && errors.Is(err, ErrRangeMismatch) {
		r.ipfs.avoid(ipfsDistrust)
	}
}

// seed adds the blob, whole in the cache and matching its digest, to the node's IPFS, so
// peers read it from this node. The node must compute the CID the descriptor names; if it
// does not (the image was named with other parameters), the blob is left pinned but unused.
func (f *filler) seed() {
	b := f.remote.ipfs
	if b == nil || b.node.api == nil {
		return
	}
	ctx, cancel := context.WithTimeout(f.ctx, 10*time.Minute)
	defer cancel()
	cid, err := b.node.api.Add(ctx, io.NewSectionReader(f.entry, 0, f.remote.size), true)
	switch {
	case err != nil:
		f.log.Warn("remotefetch: adding the blob to IPFS failed; peers cannot read it from this node", "cid", b.cid, "err", err)
	case cid != b.cid:
		f.log.Warn("remotefetch: IPFS named the blob by another CID than its descriptor; peers cannot read it from this node",
			"cid", b.cid, "got", cid)
	default:
		f.log.Info("remotefetch: blob added to IPFS for peers", "cid", cid)
		b.node.metrics.ipfsSeeded.Inc()
	}
}
