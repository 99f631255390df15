package credentials

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMemoryIsPerRepository(t *testing.T) {
	var m Memory
	if err := m.Put("reg.example:5000/team/app:v1", "u", "p"); err != nil {
		t.Fatal(err)
	}
	if err := m.Put("busybox", "hub", "hubpass"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ host, repo, user, secret string }{
		{"reg.example:5000", "team/app", "u", "p"},
		{"reg.example:5000", "team/other", "", ""},
		{"reg.example", "team/app", "", ""},
		{"registry-1.docker.io", "library/busybox", "hub", "hubpass"},
	} {
		u, s, err := m.Credentials(t.Context(), tc.host, tc.repo)
		if err != nil || u != tc.user || s != tc.secret {
			t.Errorf("Credentials(%s, %s) = %q %q %v, want %q %q", tc.host, tc.repo, u, s, err, tc.user, tc.secret)
		}
	}
	// A later pull's credentials replace the earlier; empty ones forget them.
	if err := m.Put("reg.example:5000/team/app", "u2", "p2"); err != nil {
		t.Fatal(err)
	}
	if u, s, _ := m.Credentials(t.Context(), "reg.example:5000", "team/app"); u != "u2" || s != "p2" {
		t.Fatalf("after a second Put: %q %q", u, s)
	}
	if err := m.Put("reg.example:5000/team/app", "", ""); err != nil || m.Len() != 1 {
		t.Fatalf("forget: %v, %d left", err, m.Len())
	}
	if err := m.Put("Bad Ref!", "u", "secret-word"); err == nil || strings.Contains(err.Error(), "secret-word") {
		t.Fatalf("bad reference: %v", err)
	}
}

type fixedSource struct {
	user, secret string
	err          error
}

func (f fixedSource) Credentials(context.Context, string, string) (string, string, error) {
	return f.user, f.secret, f.err
}

func TestChainFirstAnswerWins(t *testing.T) {
	broken := fixedSource{err: errors.New("helper broke")}
	c := Chain{fixedSource{}, broken, fixedSource{user: "a", secret: "1"}, fixedSource{user: "b", secret: "2"}}
	if u, s, err := c.Credentials(t.Context(), "h", "r"); u != "a" || s != "1" || err != nil {
		t.Fatalf("Chain = %q %q %v, want the first source with credentials", u, s, err)
	}
	if _, _, err := (Chain{fixedSource{}, broken}).Credentials(t.Context(), "h", "r"); err == nil {
		t.Fatal("no credentials and a failed source: no error")
	}
	if u, s, err := (Chain{fixedSource{}}).Credentials(t.Context(), "h", "r"); u != "" || s != "" || err != nil {
		t.Fatalf("anonymous chain = %q %q %v", u, s, err)
	}
}

// TestFileRereadsChangedConfig: a config.json written or changed after start is used at the
// next lookup, without a restart.
func TestFileRereadsChangedConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	f, err := NewFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if u, s, err := f.Credentials(t.Context(), "reg.example", "app"); u != "" || s != "" || err != nil {
		t.Fatalf("missing file: %q %q %v", u, s, err)
	}
	write := func(user, pass string, mtime time.Time) {
		t.Helper()
		if err := os.WriteFile(path, []byte(`{"auths":{"reg.example":{"username":"`+user+`","password":"`+pass+`"}}}`), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	base := time.Now()
	write("old", "pass1", base)
	if u, s, err := f.Credentials(t.Context(), "reg.example", "app"); u != "old" || s != "pass1" || err != nil {
		t.Fatalf("new file: %q %q %v", u, s, err)
	}
	write("new", "pass2", base.Add(time.Second)) // same size, later mtime
	if u, s, err := f.Credentials(t.Context(), "reg.example", "app"); u != "new" || s != "pass2" || err != nil {
		t.Fatalf("changed file: %q %q %v", u, s, err)
	}
	if err := os.WriteFile(path, []byte(`{"auths":`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.Credentials(t.Context(), "reg.example", "app"); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("broken file: %v, want ErrBadConfig", err)
	}
	if _, err := NewFile(path); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("NewFile of a broken file: %v, want ErrBadConfig", err)
	}
}
