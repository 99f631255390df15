// Package credentials finds registry credentials. Its sources (Source, tried in order by a
// Chain): Docker's config.json ("auths", "credsStore", "credHelpers" and docker-credential-*
// helper programs, as the docker CLI reads them; File reads it again whenever it changes),
// kubelet's credential provider exec plugins (Providers), and the per-repository credentials
// that CRI pulls bring at run time (Memory).
// It sits beside the registry clients: remotefetch's HTTP layer in the read path of
// docs/DESIGN.md, and convert's pulls and pushes, ask it for a host's username and secret when
// a registry challenges a request. It imports neither.
//
// Secrets are returned to the caller only; they never appear in errors or logs, and nothing
// here writes them anywhere.
package credentials

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// ErrBadConfig reports a config.json that cannot be used.
var ErrBadConfig = errors.New("credentials: bad docker config")

// helperTimeout bounds one run of a credential helper.
const helperTimeout = 10 * time.Second

// Store answers credential lookups from one parsed config.json.
type Store struct {
	auths       map[string]authEntry // normalized host -> entry
	credsStore  string
	credHelpers map[string]string
}

type authEntry struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
}

type configFile struct {
	Auths       map[string]authEntry `json:"auths"`
	CredsStore  string               `json:"credsStore"`
	CredHelpers map[string]string    `json:"credHelpers"`
}

// DefaultPath is $DOCKER_CONFIG/config.json, else ~/.docker/config.json.
func DefaultPath() string {
	if dir := os.Getenv("DOCKER_CONFIG"); dir != "" {
		return filepath.Join(dir, "config.json")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".docker", "config.json")
}

// Load reads the config file at path ("" means DefaultPath). A missing file gives an empty
// Store (anonymous access), as with the docker CLI.
func Load(path string) (*Store, error) {
	if path == "" {
		path = DefaultPath()
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) || path == "" {
		return &Store{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("credentials: read %s: %w", path, err)
	}
	s, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// Parse parses config.json bytes. Errors never quote the file's content.
func Parse(b []byte) (*Store, error) {
	var cf configFile
	if err := json.Unmarshal(b, &cf); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return nil, fmt.Errorf("%w: JSON syntax error at byte %d", ErrBadConfig, syn.Offset)
		}
		return nil, fmt.Errorf("%w: unexpected JSON structure", ErrBadConfig)
	}
	s := &Store{auths: map[string]authEntry{}, credsStore: cf.CredsStore, credHelpers: map[string]string{}}
	for key, e := range cf.Auths {
		s.auths[normalizeHost(key)] = e
	}
	for key, helper := range cf.CredHelpers {
		s.credHelpers[normalizeHost(key)] = helper
	}
	return s, nil
}

// normalizeHost turns config keys like "https://index.docker.io/v1/" into a bare host.
func normalizeHost(key string) string {
	key = strings.TrimPrefix(strings.TrimPrefix(key, "https://"), "http://")
	if i := strings.IndexByte(key, '/'); i >= 0 {
		key = key[:i]
	}
	switch key {
	case "index.docker.io", "registry-1.docker.io", "docker.io":
		return "docker.io"
	}
	return key
}

// Get returns the username and secret for host ("" and "" for anonymous). An identity token
// is returned as the secret with an empty username, the convention containerd's authorizer
// uses for refresh tokens.
func (s *Store) Get(ctx context.Context, host string) (username, secret string, err error) {
	host = normalizeHost(host)
	if helper, ok := s.credHelpers[host]; ok {
		return runHelper(ctx, helper, host)
	}
	if s.credsStore != "" {
		return runHelper(ctx, s.credsStore, host)
	}
	e, ok := s.auths[host]
	if !ok {
		return "", "", nil
	}
	if e.IdentityToken != "" {
		return "", e.IdentityToken, nil
	}
	if e.Auth != "" {
		raw, err := base64.StdEncoding.DecodeString(e.Auth)
		if err != nil {
			return "", "", fmt.Errorf("%w: auth for %s is not base64", ErrBadConfig, host)
		}
		user, pass, ok := strings.Cut(string(raw), ":")
		if !ok {
			return "", "", fmt.Errorf("%w: auth for %s is not user:password", ErrBadConfig, host)
		}
		return user, pass, nil
	}
	return e.Username, e.Password, nil
}

// runHelper runs docker-credential-<helper> get, which reads the server on stdin and prints
// {"Username":..., "Secret":...}. A helper's "not found" answer means anonymous.
func runHelper(ctx context.Context, helper, host string) (string, string, error) {
	if helper == "" || strings.ContainsAny(helper, `/\`) {
		return "", "", fmt.Errorf("%w: credential helper name %q", ErrBadConfig, helper)
	}
	ctx, cancel := context.WithTimeout(ctx, helperTimeout)
	defer cancel()
	server := host
	if host == "docker.io" {
		server = "https://index.docker.io/v1/"
	}
	cmd := exec.CommandContext(ctx, "docker-credential-"+helper, "get")
	cmd.Stdin = strings.NewReader(server)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if strings.Contains(stdout.String()+stderr.String(), "credentials not found") {
			return "", "", nil
		}
		// The helper's output may contain secrets: report only the exit status.
		return "", "", fmt.Errorf("credentials: helper docker-credential-%s for %s: %w", helper, host, err)
	}
	var out struct {
		Username string `json:"Username"`
		Secret   string `json:"Secret"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		return "", "", fmt.Errorf("credentials: helper docker-credential-%s for %s: unparsable output", helper, host)
	}
	if out.Username == "<token>" {
		return "", out.Secret, nil
	}
	return out.Username, out.Secret, nil
}
