// Package tracestore keeps the start traces that `ctr-obd record-trace` records (read by the
// snapshotter and `ctr-obd rpull`), one file per chain of overlaybd layer blobs, where later
// starts of the same image look them up and hand them to bdd's Prefetch; and, beside each, the
// chain's page trace (pagetrace), which the snapshotter records when it releases the chain's
// device and reads in at the next mount. It sits beside the read path of docs/DESIGN.md: a
// trace (blocktrace) lists byte ranges of remotefetch.Blob, the registry box at the bottom,
// and prefetching fills the cache box above it before the block device asks.
package tracestore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/obdproject/obd/blocktrace"
	"github.com/obdproject/obd/pagetrace"
)

// DefaultDir is where traces are kept unless a command says otherwise: next to bdd's default
// state directory (/var/lib/obd/bdd).
const DefaultDir = "/var/lib/obd/traces"

// ErrNoTrace is returned by Load when no trace was recorded for a chain.
var ErrNoTrace = errors.New("no trace recorded")

// Store is a directory of traces keyed by chain ID.
type Store struct {
	Dir string
}

// ChainID returns the key of an image's trace: the OCI chain ID of its overlaybd layer blob
// digests, lowest layer first. Images sharing all their layers share their trace.
func ChainID(blobs []digest.Digest) (digest.Digest, error) {
	if len(blobs) == 0 {
		return "", errors.New("tracestore: no layer blobs")
	}
	for _, b := range blobs {
		if err := b.Validate(); err != nil {
			return "", fmt.Errorf("tracestore: layer blob %q: %w", b, err)
		}
	}
	return identity.ChainID(blobs), nil
}

// Path returns the file the trace of chain is kept in.
func (s Store) Path(chain digest.Digest) string {
	return filepath.Join(s.Dir, chain.Algorithm().String()+"-"+chain.Encoded()+".trace")
}

// Save validates trace (blocktrace's encoding, as bdd's StopTrace returns it) and stores it
// for chain, replacing an earlier one atomically.
func (s Store) Save(chain digest.Digest, trace []byte) error {
	if err := chain.Validate(); err != nil {
		return fmt.Errorf("tracestore: chain %q: %w", chain, err)
	}
	if _, err := blocktrace.Decode(trace); err != nil {
		return fmt.Errorf("tracestore: save trace of %s: %w", chain, err)
	}
	return s.write(s.Path(chain), trace)
}

// PagesPath returns the file the page trace of chain is kept in.
func (s Store) PagesPath(chain digest.Digest) string {
	return filepath.Join(s.Dir, chain.Algorithm().String()+"-"+chain.Encoded()+".pages")
}

// SavePages stores the page trace of chain (what its last start read, by file), replacing an
// earlier one atomically.
func (s Store) SavePages(chain digest.Digest, pages pagetrace.Trace) error {
	if err := chain.Validate(); err != nil {
		return fmt.Errorf("tracestore: chain %q: %w", chain, err)
	}
	return s.write(s.PagesPath(chain), pages.Encode())
}

// LoadPages returns the stored page trace of chain; an error wrapping ErrNoTrace when there is
// none.
func (s Store) LoadPages(chain digest.Digest) (pagetrace.Trace, error) {
	var pages pagetrace.Trace
	err := s.read(chain, s.PagesPath, "pages of ", func(data []byte) (err error) {
		pages, err = pagetrace.Decode(data)
		return err
	})
	return pages, err
}

// read reads the file pathOf gives for chain and hands it to parse; what names the kind of
// file in the ErrNoTrace error.
func (s Store) read(chain digest.Digest, pathOf func(digest.Digest) string, what string, parse func([]byte) error) error {
	if err := chain.Validate(); err != nil {
		return fmt.Errorf("tracestore: chain %q: %w", chain, err)
	}
	path := pathOf(chain)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("tracestore: %s%s: %w", what, chain, ErrNoTrace)
	}
	if err != nil {
		return fmt.Errorf("tracestore: %w", err)
	}
	if err := parse(data); err != nil {
		return fmt.Errorf("tracestore: %s: %w", path, err)
	}
	return nil
}

// write replaces path with data atomically.
func (s Store) write(path string, data []byte) error {
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return fmt.Errorf("tracestore: %w", err)
	}
	tmp, err := os.CreateTemp(s.Dir, ".trace-*")
	if err != nil {
		return fmt.Errorf("tracestore: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("tracestore: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("tracestore: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("tracestore: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("tracestore: %w", err)
	}
	return nil
}

// Load returns the stored trace of chain, checked to parse. It returns an error wrapping
// ErrNoTrace when there is none.
func (s Store) Load(chain digest.Digest) ([]byte, error) {
	var trace []byte
	err := s.read(chain, s.Path, "", func(data []byte) error {
		_, err := blocktrace.Decode(data)
		trace = data
		return err
	})
	if err != nil {
		return nil, err
	}
	return trace, nil
}
