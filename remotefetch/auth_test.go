package remotefetch

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obdproject/obd/credentials"
	"github.com/obdproject/obd/internal/testregistry"
)

// TestExpiredTokenMidLife: a registry refuses the token the fetcher holds, with a plain
// challenge, long before the lifetime it was issued with; the next read fetches a new token
// instead of failing.
func TestExpiredTokenMidLife(t *testing.T) {
	e := newEnv(t, testregistry.Options{Auth: testregistry.AuthToken}, 4*testUnit, false)
	f := newFetcher(t, Options{DockerConfig: dockerConfig(t, e.reg, e.reg.Host)})
	b := open(t, f, e)
	defer b.Close()
	if err := checkRead(t, b, e.data, 0, 10); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 4; i++ {
		e.reg.ExpireTokens()
		issued := e.reg.TokensIssued()
		if err := checkRead(t, b, e.data, int64(i)*testUnit, 10); err != nil {
			t.Fatalf("read %d after the token expired: %v", i, err)
		}
		if got := e.reg.TokensIssued() - issued; got != 1 {
			t.Fatalf("read %d: %d tokens fetched after expiry, want 1", i, got)
		}
	}
}

// TestCredentialsFixedWithoutRestart: a read refused for wrong credentials in config.json
// succeeds once the file is corrected, in the same fetcher.
func TestCredentialsFixedWithoutRestart(t *testing.T) {
	e := newEnv(t, testregistry.Options{Auth: testregistry.AuthToken}, 4*testUnit, false)
	path := filepath.Join(t.TempDir(), "config.json")
	writeAuth := func(password string) {
		t.Helper()
		auth := base64.StdEncoding.EncodeToString([]byte(e.reg.Username() + ":" + password))
		if err := os.WriteFile(path, []byte(`{"auths":{"`+e.reg.Host+`":{"auth":"`+auth+`"}}}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeAuth("wrong-secret-word")
	f := newFetcher(t, Options{DockerConfig: path})
	b := open(t, f, e)
	defer b.Close()
	_, err := b.ReadAt(make([]byte, 10), 0)
	if !errors.Is(err, ErrUnauthorized) || strings.Contains(err.Error(), "wrong-secret-word") {
		t.Fatalf("read with a wrong password: %v, want ErrUnauthorized without the password", err)
	}
	writeAuth(e.reg.Password() + "\n")
	writeAuth(e.reg.Password()) // a different size than the wrong one's, whatever the clock
	if err := checkRead(t, b, e.data, 0, 10); err != nil {
		t.Fatalf("read after config.json was corrected: %v", err)
	}
}

// TestCredentialsPerRepository: credentials given for one repository (as CRI gives them)
// authorize its blobs and no other repository's.
func TestCredentialsPerRepository(t *testing.T) {
	e := newEnv(t, testregistry.Options{Auth: testregistry.AuthBasic}, 2*testUnit, false)
	var mem credentials.Memory
	f := newFetcher(t, Options{Credentials: &mem})
	if err := mem.Put(e.reg.Host+"/other/repo", e.reg.Username(), e.reg.Password()); err != nil {
		t.Fatal(err)
	}
	b := open(t, f, e)
	defer b.Close()
	if _, err := b.ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("read with another repository's credentials: %v, want ErrUnauthorized", err)
	}
	if err := mem.Put(e.ref, e.reg.Username(), e.reg.Password()); err != nil {
		t.Fatal(err)
	}
	if err := checkRead(t, b, e.data, 0, 10); err != nil {
		t.Fatalf("read after the repository's credentials arrived: %v", err)
	}
}

// TestAuthorizeCachedBlob: a blob that one repository's image brought and that is verified,
// so shared by every repository, is refused to another repository the node has no
// credentials for, until it has them; a blob that is not on the node is not checked.
func TestAuthorizeCachedBlob(t *testing.T) {
	e := newEnv(t, testregistry.Options{Auth: testregistry.AuthBasic}, 3*testUnit, false)
	private := e.reg.Host + "/private/app:v1"
	e.reg.PushBlob(t, "private/app", e.data)
	var mem credentials.Memory
	if err := mem.Put(e.ref, e.reg.Username(), e.reg.Password()); err != nil {
		t.Fatal(err)
	}
	f := newFetcher(t, Options{Credentials: &mem})
	size := int64(len(e.data))

	if err := f.Authorize(t.Context(), private, e.dgst, size); err != nil {
		t.Fatalf("nothing cached: %v, want no check", err)
	}
	b := open(t, f, e)
	if err := b.Verify(t.Context()); err != nil {
		t.Fatal(err)
	}
	b.Close()
	gets := e.reg.BlobGets()
	err := f.Authorize(t.Context(), private, e.dgst, size)
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("cached blob, no credentials for its repository: %v, want ErrUnauthorized", err)
	}
	if e.reg.BlobGets() == gets {
		t.Fatal("Authorize asked the registry nothing")
	}
	if err := f.Authorize(t.Context(), e.ref, e.dgst, size); err != nil {
		t.Fatalf("the repository that brought it: %v", err)
	}
	if err := mem.Put(private, e.reg.Username(), e.reg.Password()); err != nil {
		t.Fatal(err)
	}
	if err := f.Authorize(t.Context(), private, e.dgst, size); err != nil {
		t.Fatalf("with the repository's credentials: %v", err)
	}
}
