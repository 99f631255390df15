package credentials

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAuthsEntries(t *testing.T) {
	cfg := `{"auths":{
		"https://index.docker.io/v1/":{"auth":"` + base64.StdEncoding.EncodeToString([]byte("hub:hubpass")) + `"},
		"127.0.0.1:5000":{"username":"u","password":"p"},
		"tok.example":{"identitytoken":"refresh-me"}}}`
	s, err := Parse([]byte(cfg))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ host, user, secret string }{
		{"registry-1.docker.io", "hub", "hubpass"},
		{"docker.io", "hub", "hubpass"},
		{"127.0.0.1:5000", "u", "p"},
		{"tok.example", "", "refresh-me"},
		{"unknown.example", "", ""},
	} {
		u, p, err := s.Get(t.Context(), tc.host)
		if err != nil || u != tc.user || p != tc.secret {
			t.Errorf("Get(%s) = %q, %q, %v; want %q, %q", tc.host, u, p, err, tc.user, tc.secret)
		}
	}
}

func TestErrorsHideSecrets(t *testing.T) {
	_, err := Parse([]byte(`{"auths":{"h":{"auth":"supersecret"`))
	if !errors.Is(err, ErrBadConfig) || strings.Contains(err.Error(), "supersecret") {
		t.Fatalf("syntax error: %v", err)
	}
	s, err := Parse([]byte(`{"auths":{"h":{"auth":"!!supersecret!!"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = s.Get(t.Context(), "h")
	if !errors.Is(err, ErrBadConfig) || strings.Contains(err.Error(), "supersecret") {
		t.Fatalf("bad base64: %v", err)
	}
}

func TestMissingFileIsAnonymous(t *testing.T) {
	s, err := Load(filepath.Join(t.TempDir(), "none.json"))
	if err != nil {
		t.Fatal(err)
	}
	if u, p, err := s.Get(t.Context(), "x"); u != "" || p != "" || err != nil {
		t.Fatalf("Get = %q %q %v", u, p, err)
	}
}

// TestCredentialHelper runs a real helper program (a shell script on PATH).
func TestCredentialHelper(t *testing.T) {
	dir := t.TempDir()
	script := "#!/bin/sh\nread server\nif [ \"$server\" = \"reg.example\" ]; then echo '{\"Username\":\"helperuser\",\"Secret\":\"helpersecret\"}'; exit 0; fi\necho 'credentials not found in native keychain'; exit 1\n"
	if err := os.WriteFile(filepath.Join(dir, "docker-credential-obdtest"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	s, err := Parse([]byte(`{"credHelpers":{"reg.example":"obdtest","other.example":"obdtest"}}`))
	if err != nil {
		t.Fatal(err)
	}
	u, p, err := s.Get(t.Context(), "reg.example")
	if err != nil || u != "helperuser" || p != "helpersecret" {
		t.Fatalf("helper: %q %q %v", u, p, err)
	}
	u, p, err = s.Get(t.Context(), "other.example")
	if err != nil || u != "" || p != "" {
		t.Fatalf("helper not found: %q %q %v", u, p, err)
	}
	s, _ = Parse([]byte(`{"credsStore":"missing-helper"}`))
	if _, _, err := s.Get(t.Context(), "reg.example"); err == nil {
		t.Fatal("missing helper program: no error")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"auths":{"a":{"auth":"dTpw"}},"credHelpers":{"b":"c"}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Parse(b)
		if err != nil || s.credsStore != "" || len(s.credHelpers) > 0 {
			return // helpers run programs; not for fuzzing
		}
		for host := range s.auths {
			_, _, _ = s.Get(t.Context(), host)
		}
	})
}
