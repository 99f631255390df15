// Package ipfsnode is obd's side of the containerd ecosystem's IPFS image convention (nerdctl's
// and stargz's): a blob added to IPFS is named in its OCI descriptor by an "ipfs://<CID>" URL,
// CIDv1, added as a UnixFS file with raw leaves. It parses such URLs, adds blobs to a local
// kubo node through its RPC API with the convention's parameters (so every node that adds the
// same bytes gets the same CID and can serve them to its peers), and names the gateway URL a
// blob's ranges are read from.
//
// It sits beside the read path of docs/DESIGN.md: remotefetch reads a blob's ranges through
// the gateway and adds the blobs it holds whole; convert names an image's layers. It links no
// fetcher, daemon or layer format.
package ipfsnode

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
)

// Scheme is the URL scheme of the convention: "ipfs://<CID>".
const Scheme = "ipfs://"

// The add parameters of the convention: nerdctl and stargz add blobs with CIDv1 and kubo's
// defaults, which are raw leaves (implied by CIDv1), 256 KiB chunks and SHA-256. Every node
// must add with exactly these, or its CID differs from the one the manifest names.
const (
	addChunker = "size-262144"
	addQuery   = "cid-version=1&raw-leaves=true&hash=sha2-256&chunker=" + addChunker + "&quieter=true&progress=false"
)

// ErrBadURL is returned for a descriptor URL that is not an ipfs://<CID> this package accepts.
var ErrBadURL = errors.New("ipfsnode: not an ipfs://<CIDv1> URL")

// maxCIDLen bounds a CID's text: a CIDv1 of a SHA-256 (or SHA-512) multihash in base32 is
// 59 (or 113) characters.
const maxCIDLen = 128

// ParseURL returns the CID of u, an "ipfs://<CID>" URL with a CIDv1 in multibase base32
// (lower case, prefix 'b'), the form the convention writes. It checks the text's shape, not
// that a node can find the CID: bytes read through it are checked by their reader.
func ParseURL(u string) (string, error) {
	cid, ok := strings.CutPrefix(u, Scheme)
	if !ok {
		return "", fmt.Errorf("%w: %q", ErrBadURL, truncate(u))
	}
	if err := CheckCID(cid); err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrBadURL, truncate(u), err)
	}
	return cid, nil
}

// CheckCID checks that cid looks like a base32 CIDv1: 'b', then 20 to maxCIDLen-1 characters
// of a-z and 2-7.
func CheckCID(cid string) error {
	if len(cid) < 21 || len(cid) > maxCIDLen {
		return fmt.Errorf("CID of %d characters, want 21 to %d", len(cid), maxCIDLen)
	}
	if cid[0] != 'b' {
		return errors.New("not a base32 CIDv1 (want prefix 'b')")
	}
	for i := 1; i < len(cid); i++ {
		if c := cid[i]; (c < 'a' || c > 'z') && (c < '2' || c > '7') {
			return fmt.Errorf("character %q at %d is not base32", c, i)
		}
	}
	return nil
}

// FromURLs returns the CID of the first ipfs:// URL of a descriptor's urls, "" if none names
// one. A malformed ipfs:// URL is an error; URLs of other schemes are left to their readers.
func FromURLs(urls []string) (string, error) {
	for _, u := range urls {
		if strings.HasPrefix(u, Scheme) {
			return ParseURL(u)
		}
	}
	return "", nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// GatewayPath is the path of cid on an IPFS HTTP gateway; its bytes are read with Range.
func GatewayPath(cid string) string { return "/ipfs/" + cid }

// CheckEndpoint checks the URL of a node's gateway or RPC API: http or https, a host, nothing
// after it.
func CheckEndpoint(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%q: want an http:// or https:// URL", raw)
	}
	if u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("%q: want scheme://host:port and nothing else", raw)
	}
	u.Path = ""
	return u, nil
}

// Client talks to a kubo node's RPC API (e.g. http://127.0.0.1:5001).
type Client struct {
	API  *url.URL
	HTTP *http.Client // nil = http.DefaultClient
}

// NewClient returns a client of the RPC API at api.
func NewClient(api string) (*Client, error) {
	u, err := CheckEndpoint(api)
	if err != nil {
		return nil, fmt.Errorf("ipfsnode: RPC API: %w", err)
	}
	return &Client{API: u}, nil
}

// Add adds the bytes of r to the node as one UnixFS file with the convention's parameters
// and returns its CID. With pin the node keeps the blocks and serves them to peers; without,
// it only computes the CID (kubo's only-hash) and stores nothing.
func (c *Client) Add(ctx context.Context, r io.Reader, pin bool) (string, error) {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		part, err := mw.CreateFormFile("file", "blob")
		if err == nil {
			_, err = io.Copy(part, r)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	q := addQuery + fmt.Sprintf("&pin=%t&only-hash=%t", pin, !pin)
	var out struct{ Hash string }
	if err := c.call(ctx, "add", q, pr, mw.FormDataContentType(), &out); err != nil {
		pr.CloseWithError(err)
		return "", err
	}
	if err := CheckCID(out.Hash); err != nil {
		return "", fmt.Errorf("ipfsnode: add: the node answered CID %q: %w", truncate(out.Hash), err)
	}
	return out.Hash, nil
}

// Pinned reports whether the node pins cid (recursively, as Add with pin does).
func (c *Client) Pinned(ctx context.Context, cid string) (bool, error) {
	if err := CheckCID(cid); err != nil {
		return false, fmt.Errorf("ipfsnode: pin ls: %w", err)
	}
	var out struct {
		Keys map[string]struct{ Type string }
	}
	err := c.call(ctx, "pin/ls", "type=recursive&arg="+url.QueryEscape(cid), nil, "", &out)
	var re *rpcError
	if errors.As(err, &re) && strings.Contains(re.Message, "not pinned") {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	_, ok := out.Keys[cid]
	return ok, nil
}

// maxAnswer bounds the JSON of an RPC answer obd reads.
const maxAnswer = 1 << 20

// rpcError is the node's error answer: {"Message": ..., "Code": ...}.
type rpcError struct {
	Command string
	Status  int
	Message string
}

func (e *rpcError) Error() string {
	return fmt.Sprintf("ipfsnode: %s: status %d: %s", e.Command, e.Status, e.Message)
}

// call POSTs an RPC command and decodes the last JSON object of its answer into out (add
// streams one object per file; the last names the file).
func (c *Client) call(ctx context.Context, cmd, query string, body io.Reader, contentType string, out any) error {
	u := *c.API
	u.Path, u.RawQuery = "/api/v0/"+cmd, query
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), body)
	if err != nil {
		return fmt.Errorf("ipfsnode: %s: %w", cmd, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("ipfsnode: %s: %w", cmd, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return fmt.Errorf("ipfsnode: %s: %w", cmd, err)
	}
	if len(data) > maxAnswer {
		return fmt.Errorf("ipfsnode: %s: answer longer than %d bytes", cmd, maxAnswer)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Message string }
		if json.Unmarshal(data, &e) != nil || e.Message == "" {
			e.Message = truncate(string(data))
		}
		return &rpcError{Command: cmd, Status: resp.StatusCode, Message: e.Message}
	}
	return decodeLast(cmd, data, out)
}

// decodeLast decodes the last of the JSON objects in data into out.
func decodeLast(cmd string, data []byte, out any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	var last json.RawMessage
	for {
		var m json.RawMessage
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("ipfsnode: %s: answer is not JSON: %w", cmd, err)
		}
		last = m
	}
	if last == nil {
		return fmt.Errorf("ipfsnode: %s: empty answer", cmd)
	}
	if err := json.Unmarshal(last, out); err != nil {
		return fmt.Errorf("ipfsnode: %s: answer: %w", cmd, err)
	}
	return nil
}
