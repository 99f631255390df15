package testregistry

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const (
	tokenService    = "testregistry"
	tokenIssuerName = "testregistry-issuer"
	tokenKeyID      = "testregistry-key"
)

// tokenIssuer is a minimal Docker token server: it checks the user's basic auth and signs a
// JWT granting the requested scopes, which the registry's token access controller verifies
// against the JWKS file holding the issuer's public key.
type tokenIssuer struct {
	signer   jose.Signer
	jwksPath string
	opts     Options
	issued   *atomic.Int64
}

func newTokenIssuer(dir string, opts Options, issued *atomic.Int64) (*tokenIssuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	jwks := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: tokenKeyID, Algorithm: string(jose.ES256), Use: "sig"}}}
	b, err := json.Marshal(jwks)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return nil, err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader(jose.HeaderKey("kid"), tokenKeyID))
	if err != nil {
		return nil, err
	}
	return &tokenIssuer{signer: signer, jwksPath: path, opts: opts, issued: issued}, nil
}

type resourceActions struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

type claims struct {
	jwt.Claims
	Access []resourceActions `json:"access"`
}

func (ti *tokenIssuer) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	user, pass, ok := req.BasicAuth()
	if !ok || subtle.ConstantTimeCompare([]byte(user), []byte(ti.opts.Username)) != 1 ||
		subtle.ConstantTimeCompare([]byte(pass), []byte(ti.opts.Password)) != 1 {
		w.Header().Set("WWW-Authenticate", `Basic realm="testregistry-token"`)
		http.Error(w, "bad credentials", http.StatusUnauthorized)
		return
	}
	var access []resourceActions
	for _, scope := range req.URL.Query()["scope"] {
		for s := range strings.FieldsSeq(scope) {
			parts := strings.Split(s, ":")
			if len(parts) < 3 {
				http.Error(w, "bad scope", http.StatusBadRequest)
				return
			}
			name := strings.Join(parts[1:len(parts)-1], ":")
			access = append(access, resourceActions{Type: parts[0], Name: name, Actions: strings.Split(parts[len(parts)-1], ",")})
		}
	}
	now := time.Now()
	c := claims{
		Claims: jwt.Claims{
			Issuer:    tokenIssuerName,
			Subject:   user,
			Audience:  jwt.Audience{req.URL.Query().Get("service")},
			Expiry:    jwt.NewNumericDate(now.Add(ti.opts.TokenTTL)),
			NotBefore: jwt.NewNumericDate(now.Add(-time.Second)),
			IssuedAt:  jwt.NewNumericDate(now),
			ID:        fmt.Sprint(ti.issued.Add(1)),
		},
		Access: access,
	}
	tok, err := jwt.Signed(ti.signer).Claims(c).Serialize()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"token":      tok,
		"expires_in": int(ti.opts.TokenTTL / time.Second),
		"issued_at":  now.UTC().Format(time.RFC3339),
	})
}

// bearerTokenID is the sequence number (the JWT ID) of the request's bearer token. The
// signature is not checked: the registry's access controller does that.
func bearerTokenID(req *http.Request) (int64, bool) {
	raw, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return 0, false
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return 0, false
	}
	var c jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil {
		return 0, false
	}
	id, err := strconv.ParseInt(c.ID, 10, 64)
	return id, err == nil
}

func decodeTokenResponse(resp *http.Response) (string, error) {
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("token: status %s", resp.Status)
	}
	var body struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	if body.Token == "" {
		return "", errors.New("token: empty token")
	}
	return body.Token, nil
}
