package credentials

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/distribution/reference"
)

// Source answers a lookup for the credentials of one repository (e.g. "team/app") on a
// registry host (e.g. "registry.example.com:5000"). Empty username and secret with a nil
// error mean the source has none; an identity token is a secret with an empty username.
type Source interface {
	Credentials(ctx context.Context, host, repo string) (username, secret string, err error)
}

// Chain asks its sources in order and returns the first credentials one has. A source that
// fails is skipped; its error is returned only when no later source has credentials.
type Chain []Source

// Credentials implements Source.
func (c Chain) Credentials(ctx context.Context, host, repo string) (string, string, error) {
	var errs []error
	for _, s := range c {
		user, secret, err := s.Credentials(ctx, host, repo)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if user != "" || secret != "" {
			return user, secret, nil
		}
	}
	return "", "", errors.Join(errs...)
}

// Memory holds credentials given for repositories while the process runs (a CRI pull's auth,
// handed over by bdd's PutCredentials), in memory only: they are never written anywhere,
// and a later Put for the same repository replaces them.
type Memory struct {
	mu    sync.RWMutex
	creds map[string]secretPair // host/repo -> credentials
}

type secretPair struct{ username, secret string }

// Put stores the credentials for the repository of ref (an image or repository reference;
// tag and digest are ignored). Empty credentials forget the repository's.
func (m *Memory) Put(ref, username, secret string) error {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return fmt.Errorf("credentials: reference %q: %w", ref, err)
	}
	key := normalizeHost(reference.Domain(named)) + "/" + reference.Path(named)
	m.mu.Lock()
	defer m.mu.Unlock()
	if username == "" && secret == "" {
		delete(m.creds, key)
		return nil
	}
	if m.creds == nil {
		m.creds = map[string]secretPair{}
	}
	m.creds[key] = secretPair{username, secret}
	return nil
}

// Credentials implements Source: the credentials put for exactly this repository.
func (m *Memory) Credentials(_ context.Context, host, repo string) (string, string, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	p := m.creds[normalizeHost(host)+"/"+repo]
	return p.username, p.secret, nil
}

// Len is the number of repositories with credentials.
func (m *Memory) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.creds)
}

// File is Docker's config.json at a path, read again whenever the file changes (its size or
// modification time), so that credentials written after the process started (a login, a
// rotated secret) are used at the registry's next challenge instead of after a restart.
type File struct {
	path string

	mu    sync.Mutex
	store *Store
	stamp fileStamp
}

type fileStamp struct {
	exists  bool
	size    int64
	modTime time.Time
}

// NewFile reads the config file at path ("" means DefaultPath) once, so a broken file is
// reported at start; a missing one is anonymous until it appears.
func NewFile(path string) (*File, error) {
	if path == "" {
		path = DefaultPath()
	}
	f := &File{path: path}
	if _, err := f.current(); err != nil {
		return nil, err
	}
	return f, nil
}

// current returns the Store of the file as it is now, reading it again if it changed.
func (f *File) current() (*Store, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var stamp fileStamp
	if info, err := os.Stat(f.path); err == nil {
		stamp = fileStamp{exists: true, size: info.Size(), modTime: info.ModTime()}
	}
	if f.store != nil && stamp == f.stamp {
		return f.store, nil
	}
	s, err := Load(f.path)
	if err != nil {
		return nil, err
	}
	f.store, f.stamp = s, stamp
	return s, nil
}

// Credentials implements Source: Docker's credentials for host, whatever the repository.
func (f *File) Credentials(ctx context.Context, host, _ string) (string, string, error) {
	s, err := f.current()
	if err != nil {
		return "", "", err
	}
	return s.Get(ctx, host)
}
