package criproxy

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestParseAuth(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, tc := range []struct {
		name         string
		auth         *runtime.AuthConfig
		domain       string
		user, secret string
	}{
		{"username", &runtime.AuthConfig{Username: "u", Password: "p"}, "reg.example", "u", "p"},
		{"identity token", &runtime.AuthConfig{IdentityToken: "tok"}, "reg.example", "", "tok"},
		{"auth", &runtime.AuthConfig{Auth: b64("u:p:with:colons")}, "reg.example", "u", "p:with:colons"},
		{"server matches", &runtime.AuthConfig{ServerAddress: "https://reg.example:5000", Username: "u", Password: "p"}, "reg.example:5000", "u", "p"},
		{"bare server", &runtime.AuthConfig{ServerAddress: "reg.example", Username: "u", Password: "p"}, "reg.example", "u", "p"},
		{"docker hub", &runtime.AuthConfig{ServerAddress: "https://index.docker.io/v1/", Username: "u", Password: "p"}, "docker.io", "u", "p"},
		{"other server", &runtime.AuthConfig{ServerAddress: "https://other.example", Username: "u", Password: "p"}, "reg.example", "", ""},
		{"empty", &runtime.AuthConfig{}, "reg.example", "", ""},
	} {
		u, s, err := parseAuth(tc.auth, tc.domain)
		if err != nil || u != tc.user || s != tc.secret {
			t.Errorf("%s: %q %q %v, want %q %q", tc.name, u, s, err, tc.user, tc.secret)
		}
	}
	for _, auth := range []string{"!!secret-word!!", b64("secret-word-without-colon")} {
		_, _, err := parseAuth(&runtime.AuthConfig{Auth: auth}, "reg.example")
		if !errors.Is(err, ErrBadAuth) || strings.Contains(err.Error(), "secret-word") {
			t.Errorf("auth %q: %v, want ErrBadAuth without the auth", auth, err)
		}
	}
}

func FuzzParseAuth(f *testing.F) {
	f.Add("https://reg.example", "u", "p", "", "", "reg.example")
	f.Add("", "", "", base64.StdEncoding.EncodeToString([]byte("u:p")), "", "docker.io")
	f.Fuzz(func(t *testing.T, server, user, pass, auth, token, domain string) {
		cfg := &runtime.AuthConfig{ServerAddress: server, Username: user, Password: pass, Auth: auth, IdentityToken: token}
		u, s, err := parseAuth(cfg, domain)
		if err != nil && (u != "" || s != "") {
			t.Fatalf("error %v with credentials", err)
		}
		if err != nil && auth != "" && len(auth) > 8 && strings.Contains(err.Error(), auth) {
			t.Fatalf("error quotes the auth: %v", err)
		}
	})
}
