// Package testzone sets up a registry zone for tests: an origin registry, a zone mirror in
// front of it (distribution in pull-through proxy mode, internal/testregistry), fault proxies
// on both links (internal/faultproxy), and a node's hosts.toml and Docker config that point a
// client at the mirror first. It is test infrastructure, outside the read path of
// docs/DESIGN.md.
//
// Credentials go where a zone needs them: the origin asks for a token (its own user); the
// mirror holds the origin's credentials in its proxy configuration and asks the zone's nodes
// for its own (basic auth, user "zone"); a node holds the zone's credentials for the mirror and,
// if it may fall over to the origin, the origin's (a read-only account in practice).
package testzone

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/obdproject/obd/internal/faultproxy"
	"github.com/obdproject/obd/internal/testregistry"
)

// Zone user and password: what a node presents to the mirror.
const (
	ZoneUser     = "zone"
	ZonePassword = "zone-secret"
)

// Options configure a zone. The zero value has a token-auth origin and a mirror with notify
// endpoints off.
type Options struct {
	Origin testregistry.Options // Auth defaults to token auth
	// Notify lists webhook URLs the mirror posts its notification events to.
	Notify []string
	// Existing, if set, is the origin to use instead of starting one (Origin is then unused):
	// zones that share an origin share its images. It must not use token auth, whose realm
	// names the link in front of it.
	Existing *testregistry.Registry
}

// Zone is a running origin and mirror; everything stops when the test ends.
type Zone struct {
	Origin *testregistry.Registry
	// OriginLink is the origin as everyone else reaches it (mirror and nodes): cut it with
	// Close, slow it with SetShaping. Image references name its host.
	OriginLink *faultproxy.Proxy
	Mirror     *testregistry.Registry
	// MirrorLink is the mirror as the nodes reach it.
	MirrorLink *faultproxy.Proxy
	// HostsDir is a containerd certs.d directory: OriginLink's host, mirror first.
	HostsDir string
}

// Start runs a zone until t ends.
func Start(t testing.TB, opts Options) *Zone {
	t.Helper()
	if opts.Origin.Auth == testregistry.AuthNone {
		opts.Origin.Auth = testregistry.AuthToken
	}
	originLink := link(t, "http://127.0.0.1:1") // pointed at the origin once it runs
	if opts.Origin.Auth == testregistry.AuthToken {
		opts.Origin.TokenRealm = originLink.URL + "/token"
	}
	origin := opts.Existing
	if origin == nil {
		origin = testregistry.Start(t, opts.Origin)
	}
	if err := originLink.SetUpstream(origin.URL); err != nil {
		t.Fatal(err)
	}
	mirror := testregistry.Start(t, testregistry.Options{Auth: testregistry.AuthBasic, Username: ZoneUser, Password: ZonePassword,
		Notify: opts.Notify,
		Proxy:  &testregistry.Proxy{RemoteURL: originLink.URL, Username: origin.Username(), Password: origin.Password()}})
	z := &Zone{Origin: origin, OriginLink: originLink, Mirror: mirror, MirrorLink: link(t, mirror.URL), HostsDir: t.TempDir()}
	dir := filepath.Join(z.HostsDir, originLink.Host)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", originLink.URL, z.MirrorLink.URL)
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return z
}

func link(t testing.TB, upstream string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(upstream)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// Ref is an image reference for repo (e.g. "obd/app") as nodes name it: on the origin's host.
func (z *Zone) Ref(repo string) string { return z.OriginLink.Host + "/" + repo }

// NodeConfig writes a node's Docker config.json: the zone's credentials for the mirror and,
// if withOrigin, the origin's for the origin's host.
func (z *Zone) NodeConfig(t testing.TB, withOrigin bool) string {
	t.Helper()
	auth := func(user, pass string) string { return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass)) }
	auths := fmt.Sprintf("%q:{\"auth\":%q}", z.MirrorLink.Host, auth(ZoneUser, ZonePassword))
	if withOrigin {
		auths += fmt.Sprintf(",%q:{\"auth\":%q}", z.OriginLink.Host, auth(z.Origin.Username(), z.Origin.Password()))
	}
	path := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(path, []byte(`{"auths":{`+auths+`}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// MirrorConfig writes the Docker config.json of a service beside the mirror (a warmer): the
// zone's credentials for the mirror's own host.
func (z *Zone) MirrorConfig(t testing.TB) string {
	t.Helper()
	auth := base64.StdEncoding.EncodeToString([]byte(ZoneUser + ":" + ZonePassword))
	path := filepath.Join(t.TempDir(), "mirror-config.json")
	if err := os.WriteFile(path, fmt.Appendf(nil, `{"auths":{%q:{"auth":%q}}}`, z.Mirror.Host, auth), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Warm reads blob d of repo whole through the mirror, which makes the mirror keep it, and
// waits until the mirror serves it (it stores a blob only after sending it).
func (z *Zone) Warm(t testing.TB, repo string, d digest.Digest) {
	t.Helper()
	if status := z.mirrorGet(t, repo, d, ""); status != http.StatusOK {
		t.Fatalf("testzone: warm %s@%s: status %d", repo, d, status)
	}
	for deadline := time.Now().Add(30 * time.Second); z.mirrorGet(t, repo, d, "bytes=0-0") != http.StatusPartialContent; {
		if time.Now().After(deadline) {
			t.Fatalf("testzone: the mirror does not serve %s@%s from its cache", repo, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mirrorGet GETs a blob from the mirror as a node of the zone and returns the status.
func (z *Zone) mirrorGet(t testing.TB, repo string, d digest.Digest, rng string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, z.Mirror.URL+"/v2/"+repo+"/blobs/"+d.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(ZoneUser, ZonePassword)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatalf("testzone: GET %s@%s from the mirror: %v", repo, d, err)
	}
	return resp.StatusCode
}
