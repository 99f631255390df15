package testregistry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/notifications"
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

// TestProxyCachesWholeBlobs pins down how distribution's pull-through cache answers, which the
// zone mirror design depends on: a range GET of a blob it lacks gets the whole blob (200) from
// the upstream and is not cached when the client leaves early; a whole GET caches it, after
// which ranges are served locally (206) without the upstream. Manifest pulls are notified.
func TestProxyCachesWholeBlobs(t *testing.T) {
	origin := Start(t, Options{Auth: AuthToken})
	events := make(chan string, 100)
	hook := http.NewServeMux()
	hook.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		events <- string(b)
	})
	hookSrv := &http.Server{Handler: hook}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hookSrv.Serve(ln)
	t.Cleanup(func() { hookSrv.Close() })
	mirror := Start(t, Options{Auth: AuthBasic, Username: "zone", Password: "zone-secret", Notify: []string{"http://" + ln.Addr().String() + "/"},
		Proxy: &Proxy{RemoteURL: origin.URL, Username: origin.Username(), Password: origin.Password()}})

	data := bytes.Repeat([]byte("0123456789"), 100000)
	d := origin.PushBlob(t, "test/proxy", data)
	u := fmt.Sprintf("%s/v2/test/proxy/blobs/%s", mirror.URL, d)
	zone := func(rng string) func(*http.Request) {
		return func(req *http.Request) {
			req.SetBasicAuth("zone", "zone-secret")
			if rng != "" {
				req.Header.Set("Range", rng)
			}
		}
	}
	if code, _ := get(t, u, nil); code != http.StatusUnauthorized {
		t.Fatalf("anonymous GET from the mirror: status %d, want 401", code)
	}
	if code, body := get(t, u, zone("bytes=10-19")); code != http.StatusOK || len(body) != len(data) {
		t.Fatalf("range GET of an uncached blob: status %d, %d bytes; want the whole blob with 200", code, len(body))
	}
	if code, body := get(t, u, zone("")); code != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("GET through the mirror: status %d, %d bytes", code, len(body))
	}
	before := origin.BlobGets()
	if code, body := get(t, u, zone("bytes=10-19")); code != http.StatusPartialContent || string(body) != "0123456789" {
		t.Fatalf("range GET of a cached blob: status %d %q, want 206", code, body)
	}
	if origin.BlobGets() != before {
		t.Fatalf("a cached blob's range GET reached the origin")
	}
	manifest := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + d.String() + `","size":1000000},"layers":[]}`)
	origin.PushManifest(t, "test/proxy", "v1", "application/vnd.oci.image.manifest.v1+json", manifest)
	req, _ := http.NewRequest(http.MethodGet, mirror.URL+"/v2/test/proxy/manifests/v1", nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	zone("")(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("manifest GET through the mirror: %s", resp.Status)
	}
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-events:
			var env struct{ Events []notifications.Event }
			if err := json.Unmarshal([]byte(ev), &env); err != nil {
				t.Fatalf("notification %q: %v", ev, err)
			}
			for _, e := range env.Events {
				if e.Action == notifications.EventActionPull && e.Target.Repository == "test/proxy" && e.Target.Tag == "v1" &&
					strings.Contains(e.Target.MediaType, "manifest") {
					return
				}
			}
		case <-timeout:
			t.Fatal("no manifest pull event from the mirror")
		}
	}
}
