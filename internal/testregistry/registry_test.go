package testregistry

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"testing"
)

func get(t *testing.T, url string, setAuth func(*http.Request)) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if setAuth != nil {
		setAuth(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func TestAnonymousPushAndPull(t *testing.T) {
	r := Start(t, Options{})
	data := []byte("hello registry")
	d := r.PushBlob(t, "test/blob", data)
	code, body := get(t, fmt.Sprintf("%s/v2/test/blob/blobs/%s", r.URL, d), nil)
	if code != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("GET blob: %d %q", code, body)
	}
	manifest := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + d.String() + `","size":14},"layers":[]}`)
	r.PushManifest(t, "test/blob", "v1", "application/vnd.oci.image.manifest.v1+json", manifest)
}

func TestBasicAuth(t *testing.T) {
	r := Start(t, Options{Auth: AuthBasic})
	d := r.PushBlob(t, "test/basic", []byte("secret data"))
	u := fmt.Sprintf("%s/v2/test/basic/blobs/%s", r.URL, d)
	if code, _ := get(t, u, nil); code != http.StatusUnauthorized {
		t.Fatalf("anonymous GET: status %d, want 401", code)
	}
	if code, _ := get(t, u, func(req *http.Request) { req.SetBasicAuth(r.Username(), "wrong") }); code != http.StatusUnauthorized {
		t.Fatalf("wrong password: status %d, want 401", code)
	}
	code, body := get(t, u, func(req *http.Request) { req.SetBasicAuth(r.Username(), r.Password()) })
	if code != http.StatusOK || string(body) != "secret data" {
		t.Fatalf("authorized GET: %d %q", code, body)
	}
}

func TestTokenAuth(t *testing.T) {
	r := Start(t, Options{Auth: AuthToken})
	d := r.PushBlob(t, "test/token", []byte("token data"))
	u := fmt.Sprintf("%s/v2/test/token/blobs/%s", r.URL, d)
	if code, _ := get(t, u, nil); code != http.StatusUnauthorized {
		t.Fatalf("anonymous GET: status %d, want 401", code)
	}
	c := &client{r: r}
	tok, err := c.bearer(t.Context(), "repository:test/token:pull")
	if err != nil {
		t.Fatal(err)
	}
	code, body := get(t, u, func(req *http.Request) { req.Header.Set("Authorization", "Bearer "+tok) })
	if code != http.StatusOK || string(body) != "token data" {
		t.Fatalf("GET with token: %d %q", code, body)
	}
	other, err := c.bearer(t.Context(), "repository:other/repo:pull")
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := get(t, u, func(req *http.Request) { req.Header.Set("Authorization", "Bearer "+other) }); code != http.StatusUnauthorized {
		t.Fatalf("token for another repo: status %d, want 401", code)
	}
}

func TestRedirectBlobs(t *testing.T) {
	r := Start(t, Options{Auth: AuthBasic, RedirectBlobs: true})
	data := bytes.Repeat([]byte("0123456789"), 1000)
	d := r.PushBlob(t, "test/redirect", data)
	u := fmt.Sprintf("%s/v2/test/redirect/blobs/%s", r.URL, d)
	if code, _ := get(t, u, nil); code != http.StatusUnauthorized {
		t.Fatalf("anonymous GET: status %d, want 401", code)
	}
	code, body := get(t, u, func(req *http.Request) {
		req.SetBasicAuth(r.Username(), r.Password())
		req.Header.Set("Range", "bytes=10-19")
	})
	if code != http.StatusPartialContent || string(body) != "0123456789" {
		t.Fatalf("redirected range GET: %d %q", code, body)
	}
	if r.BlobStoreGets() != 1 || r.BlobGets() != 2 {
		t.Fatalf("blob store GETs %d (want 1), registry blob GETs %d (want 2)", r.BlobStoreGets(), r.BlobGets())
	}
	if code, _ := get(t, "http://"+r.BlobStoreHost()+"/blob/"+d.String()+"?sig=forged", nil); code != http.StatusForbidden {
		t.Fatalf("forged signature: status %d, want 403", code)
	}
}
