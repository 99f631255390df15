package credentials

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writePlugin installs a credential provider plugin (a shell script) named name in dir. It
// appends its stdin (the request) to dir/name.calls and prints response.
func writePlugin(t *testing.T, dir, name, response string) {
	t.Helper()
	script := fmt.Sprintf("#!/bin/sh\ncat >> %q\necho >> %q\ncat <<'EOF'\n%s\nEOF\n",
		filepath.Join(dir, name+".calls"), filepath.Join(dir, name+".calls"), response)
	if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

func calls(t *testing.T, dir, name string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, name+".calls"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(strings.TrimSpace(string(data)))
}

const providerConfig = `apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: acme-login
    matchImages: ["*.acme.example", "reg.example:5000/team"]
    defaultCacheDuration: 10m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args: [get-credentials]
    env:
      - name: ACME_PROFILE
        value: ci
`

func TestProvidersRunKubeletPlugins(t *testing.T) {
	dir := t.TempDir()
	writePlugin(t, dir, "acme-login", `{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1",
		"cacheKeyType":"Registry","auth":{
		"*.acme.example":{"username":"wild","password":"w-pass"},
		"eu.acme.example/team":{"username":"team","password":"t-pass"},
		"reg.example:5000":{"username":"reg","password":"r-pass"}}}`)
	p, err := ParseProviders([]byte(providerConfig), dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ host, repo, user, secret string }{
		{"eu.acme.example", "team/app", "team", "t-pass"}, // the most specific entry
		{"eu.acme.example", "other/app", "wild", "w-pass"},
		{"reg.example:5000", "team/app", "reg", "r-pass"},
		{"reg.example:5000", "solo/app", "", ""}, // matchImages wants the team path
		{"reg.example", "team/app", "", ""},      // and the port
		{"a.b.acme.example", "x", "", ""},        // one label per glob
	} {
		u, s, err := p.Credentials(t.Context(), tc.host, tc.repo)
		if err != nil || u != tc.user || s != tc.secret {
			t.Errorf("Credentials(%s, %s) = %q %q %v, want %q %q", tc.host, tc.repo, u, s, err, tc.user, tc.secret)
		}
	}
	// cacheKeyType Registry: one run per registry for the default cache duration.
	got := calls(t, dir, "acme-login")
	if len(got) != 2 || !strings.Contains(got[0], `"image":"eu.acme.example/team/app"`) ||
		!strings.Contains(got[0], `"kind":"CredentialProviderRequest"`) || !strings.Contains(got[1], "reg.example:5000/team/app") {
		t.Fatalf("plugin requests = %q, want one per registry", got)
	}
}

func TestProvidersFailuresHideOutput(t *testing.T) {
	dir := t.TempDir()
	script := "#!/bin/sh\necho 'leaked-secret-word'; echo 'leaked-secret-word' >&2; exit 3\n"
	if err := os.WriteFile(filepath.Join(dir, "acme-login"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := ParseProviders([]byte(providerConfig), dir)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = p.Credentials(t.Context(), "x.acme.example", "app")
	if err == nil || !strings.Contains(err.Error(), "exit status 3") || strings.Contains(err.Error(), "leaked") {
		t.Fatalf("failing plugin: %v", err)
	}
	writePlugin(t, dir, "acme-login", `{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Sometimes","auth":{"leaked-secret-word":{}}}`)
	if _, _, err = p.Credentials(t.Context(), "x.acme.example", "app"); err == nil || strings.Contains(err.Error(), "leaked") {
		t.Fatalf("bad cacheKeyType: %v", err)
	}
	writePlugin(t, dir, "acme-login", `not json leaked-secret-word`)
	if _, _, err = p.Credentials(t.Context(), "x.acme.example", "app"); err == nil || strings.Contains(err.Error(), "leaked") {
		t.Fatalf("unparsable response: %v", err)
	}
}

func TestParseProvidersValidates(t *testing.T) {
	for name, cfg := range map[string]string{
		"kind":     strings.Replace(providerConfig, "kind: CredentialProviderConfig", "kind: Other", 1),
		"path":     strings.Replace(providerConfig, "name: acme-login", "name: ../bin/sh", 1),
		"api":      strings.Replace(providerConfig, "apiVersion: credentialprovider.kubelet.k8s.io/v1", "apiVersion: v9", 1),
		"duration": strings.Replace(providerConfig, "defaultCacheDuration: 10m", "defaultCacheDuration: soon", 1),
		"field":    providerConfig + "    tokenAttributes: {}\n",
		"match":    strings.Replace(providerConfig, `matchImages: ["*.acme.example", "reg.example:5000/team"]`, "matchImages: []", 1),
	} {
		if _, err := ParseProviders([]byte(cfg), t.TempDir()); !errors.Is(err, ErrBadProviderConfig) {
			t.Errorf("%s: %v, want ErrBadProviderConfig", name, err)
		}
	}
}

func FuzzParseProviders(f *testing.F) {
	f.Add([]byte(providerConfig))
	f.Add([]byte(`{"kind":"CredentialProviderConfig","providers":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseProviders(b, "/nonexistent")
		if err != nil {
			return
		}
		for _, pr := range p.providers {
			for _, m := range pr.MatchImages {
				target, err := parseSchemeless(m)
				if err == nil {
					_ = matchesAny(pr.MatchImages, target)
				}
			}
		}
	})
}
