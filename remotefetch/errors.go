package remotefetch

import (
	"errors"

	"github.com/obdproject/obd/rangetable"
	"github.com/obdproject/obd/remotefetch/cache"
)

// Sentinel errors callers can branch on with errors.Is.
var (
	// ErrDeadline: a read did not complete within Options.ReadTimeout. The error also names the
	// blob, the byte range and the last cause of failure.
	ErrDeadline = errors.New("remotefetch: read deadline exceeded")
	// ErrDigestMismatch: the complete blob did not match its digest. Its cached copy was
	// discarded; the Blob fails every further read and must be reopened.
	ErrDigestMismatch = cache.ErrDigestMismatch
	// ErrNotFound: no configured host has the blob (HTTP 404).
	ErrNotFound = errors.New("remotefetch: blob not found")
	// ErrUnauthorized: the registry refused the credentials (HTTP 401/403 after auth).
	ErrUnauthorized = errors.New("remotefetch: unauthorized")
	// ErrBadResponse: a response did not match the request (status, Content-Range, length).
	// It is retried; it appears as the cause of an ErrDeadline when it persists.
	ErrBadResponse = errors.New("remotefetch: bad response")
	// ErrRangeMismatch: bytes a registry sent do not match the blob's range table (or the
	// table does not match the digest the image pins). The error names the blob, the bytes and
	// the host that sent them. Such a fetch is retried a few times, then fails the read.
	ErrRangeMismatch = rangetable.ErrMismatch
	// ErrUnverified: the blob has no range table and Options.RequireVerified refuses it.
	ErrUnverified = errors.New("remotefetch: blob has no range table and only verified blobs are allowed")
	// ErrClosed: the Blob or Fetcher was closed.
	ErrClosed = errors.New("remotefetch: closed")
)

// permanentError marks a failure that retrying cannot fix.
type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

func permanent(err error) error { return permanentError{err} }

func isPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}
