package sandboxapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// Client speaks the API to a server (cmd/obd-lambda, sandbox.Handler); `obd sandbox` and the
// policy probe use it. Its methods are safe for concurrent use.
type Client struct {
	Base  string       // http(s)://HOST:PORT, or unix:///PATH for a server on a unix socket
	HTTP  *http.Client // default http.DefaultClient (or a unix-socket client for unix://)
	Token string       // bearer token, sent when not empty (a server on TCP requires one)
}

// endpoint returns the URL prefix and HTTP client for c.Base.
func (c *Client) endpoint() (string, *http.Client) {
	if path, ok := strings.CutPrefix(c.Base, "unix://"); ok {
		hc := c.HTTP
		if hc == nil {
			hc = &http.Client{Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", path)
				},
			}}
		}
		return "http://obd-lambda", hc
	}
	if c.HTTP != nil {
		return strings.TrimRight(c.Base, "/"), c.HTTP
	}
	return strings.TrimRight(c.Base, "/"), http.DefaultClient
}

// do sends one request. A response with status 300 or more is closed and returned as an
// *APIError.
func (c *Client) do(ctx context.Context, method, path, contentType string, body io.Reader) (*http.Response, error) {
	base, hc := c.endpoint()
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("sandbox client: %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var e ErrorBody
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return nil, &APIError{Status: resp.StatusCode, Message: e.Error}
	}
	return resp, nil
}

func (c *Client) getJSON(ctx context.Context, path string, v any) error {
	resp, err := c.do(ctx, http.MethodGet, path, "", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

// Register registers spec with its handler code: a tar (or tar.gz) of the handler directory
// (ArchiveDir makes one), uploaded.
func (c *Client) Register(ctx context.Context, spec FunctionSpec, code io.Reader) error {
	if code == nil {
		return fmt.Errorf("sandbox client: register %s: no handler code", spec.Name)
	}
	js, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		err := mw.WriteField(FormSpec, string(js))
		if err == nil {
			var part io.Writer
			if part, err = mw.CreateFormFile(FormCode, "code.tar"); err == nil {
				_, err = io.Copy(part, code)
			}
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	resp, err := c.do(ctx, http.MethodPost, "/functions", mw.FormDataContentType(), pr)
	pr.Close()
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// Run invokes function name with event (JSON) and returns its result and start path.
func (c *Client) Run(ctx context.Context, name string, event []byte) (json.RawMessage, StartPath, error) {
	resp, err := c.do(ctx, http.MethodPost, "/run/"+url.PathEscape(name), "application/json", bytes.NewReader(event))
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return out, StartPath(resp.Header.Get(HeaderStartPath)), err
}

// List returns the registered functions.
func (c *Client) List(ctx context.Context) ([]FunctionSpec, error) {
	var specs []FunctionSpec
	return specs, c.getJSON(ctx, "/functions", &specs)
}

// Stats returns function name's counters.
func (c *Client) Stats(ctx context.Context, name string) (Stats, error) {
	var st Stats
	return st, c.getJSON(ctx, "/functions/"+url.PathEscape(name)+"/stats", &st)
}

// ServerStats returns the server's counters over all functions.
func (c *Client) ServerStats(ctx context.Context) (ServerStats, error) {
	var st ServerStats
	return st, c.getJSON(ctx, "/stats", &st)
}

// Delete unregisters function name.
func (c *Client) Delete(ctx context.Context, name string) error {
	resp, err := c.do(ctx, http.MethodDelete, "/functions/"+url.PathEscape(name), "", nil)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}
