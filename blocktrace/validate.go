package blocktrace

import (
	_ "crypto/sha512" // so that Validate accepts sha384 and sha512 digests in every binary
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Limits of a valid trace. Decode takes traces from the network and from disk; these bound
// what one costs to read and to replay, far above what a container start reads (a python
// start's trace lists a few thousand ranges, 5 MiB). Together they keep every valid trace's
// encoding under MaxEncodedBytes (TestLargestTraceFits).
const (
	// MaxEncodedBytes bounds an encoded trace, so Decode's memory: 64 MiB.
	MaxEncodedBytes = 64 << 20
	// MaxBlobs bounds a trace's blobs: a recording may span several images' starts, each of
	// at most ~128 layers (the overlay mounts' limit).
	MaxBlobs = 1024
	// MaxRangesPerBlob bounds one blob's ranges, which a replay sorts and merges at once: a
	// 2 GiB layer read in 4 KiB pieces with a gap after each.
	MaxRangesPerBlob = 1 << 18
	// MaxRanges bounds the ranges of all blobs, which a replay orders at once.
	MaxRanges = 1 << 19
	// MaxRefLen bounds a blob's Ref, several times the longest reference distribution
	// accepts (a 255-byte name, a 128-byte tag and a digest).
	MaxRefLen = 1024
)

// ErrBadTrace is wrapped by every error about a trace that cannot be used: Decode's, Encode's
// and Validate's, each an *Error that also wraps one of the kinds below.
var ErrBadTrace = errors.New("blocktrace: bad trace")

// Kinds of bad trace, for callers that branch on what was wrong.
var (
	ErrSyntax        = errors.New("not a trace's JSON") // also a wrong type, a field unknown or given twice
	ErrVersion       = errors.New("unknown version")
	ErrLimit         = errors.New("over a limit")
	ErrBadValue      = errors.New("bad value")
	ErrDuplicateBlob = errors.New("blob listed twice")
	ErrOutsideBlob   = errors.New("range outside its blob")
)

// Error is a bad trace: the kind of fault, where it is, and what exactly.
type Error struct {
	Kind   error  // one of ErrSyntax, ErrVersion, ErrLimit, ErrBadValue, ErrDuplicateBlob, ErrOutsideBlob
	Blob   int    // index of the blob at fault in Trace.Blobs, or -1
	Range  int    // index of the range at fault in that blob's Ranges, or -1
	Detail string // what was wrong, e.g. the value
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(ErrBadTrace.Error())
	if e.Blob >= 0 {
		fmt.Fprintf(&b, ": blob %d", e.Blob)
	}
	if e.Range >= 0 {
		fmt.Fprintf(&b, " range %d", e.Range)
	}
	b.WriteString(": " + e.Kind.Error())
	if e.Detail != "" {
		b.WriteString(": " + e.Detail)
	}
	return b.String()
}

// Unwrap makes errors.Is match both ErrBadTrace and the error's kind.
func (e *Error) Unwrap() []error { return []error{ErrBadTrace, e.Kind} }

// fault returns an *Error of kind about the whole trace.
func fault(kind error, format string, args ...any) *Error {
	return &Error{Kind: kind, Blob: -1, Range: -1, Detail: fmt.Sprintf(format, args...)}
}

// blobFault returns an *Error of kind about blob i (and its range j, unless j is -1).
func blobFault(i, j int, kind error, format string, args ...any) *Error {
	return &Error{Kind: kind, Blob: i, Range: j, Detail: fmt.Sprintf(format, args...)}
}

// Validate checks that t can be replayed: within the limits above, every blob with a
// printable ASCII Ref, a valid Digest of its own (no blob twice), a positive Size and at
// least one range; every range with Off >= 0, Len > 0, First >= 0, inside its blob. Ranges
// may overlap and come in any order. The error is an *Error.
func (t Trace) Validate() error {
	if len(t.Blobs) > MaxBlobs {
		return fault(ErrLimit, "%d blobs, at most %d", len(t.Blobs), MaxBlobs)
	}
	seen := make(map[digest.Digest]int, len(t.Blobs))
	ranges := 0
	for i, b := range t.Blobs {
		if err := b.validate(i); err != nil {
			return err
		}
		if first, dup := seen[b.Digest]; dup {
			return blobFault(i, -1, ErrDuplicateBlob, "%s, first as blob %d", b.Digest, first)
		}
		seen[b.Digest] = i
		if ranges += len(b.Ranges); ranges > MaxRanges {
			return blobFault(i, -1, ErrLimit, "more than %d ranges in all", MaxRanges)
		}
	}
	return nil
}

// validate checks blob i of a trace on its own.
func (b Blob) validate(i int) error {
	if err := checkRef(b.Ref); err != nil {
		return blobFault(i, -1, ErrBadValue, "ref: %v", err)
	}
	if err := b.Digest.Validate(); err != nil {
		return blobFault(i, -1, ErrBadValue, "digest %q: %v", b.Digest, err)
	}
	if b.Size <= 0 {
		return blobFault(i, -1, ErrBadValue, "%s: size %d", b.Digest, b.Size)
	}
	if b.RangeTable != "" || b.RangeTableOffset != 0 {
		if err := b.RangeTable.Validate(); err != nil {
			return blobFault(i, -1, ErrBadValue, "%s: range table %q: %v", b.Digest, b.RangeTable, err)
		}
		if b.RangeTableOffset <= 0 || b.RangeTableOffset >= b.Size {
			return blobFault(i, -1, ErrBadValue, "%s: range table offset %d, blob size %d", b.Digest, b.RangeTableOffset, b.Size)
		}
	}
	if len(b.Ranges) == 0 {
		return blobFault(i, -1, ErrBadValue, "%s: no ranges", b.Digest)
	}
	if len(b.Ranges) > MaxRangesPerBlob {
		return blobFault(i, -1, ErrLimit, "%s: %d ranges, at most %d", b.Digest, len(b.Ranges), MaxRangesPerBlob)
	}
	for j, r := range b.Ranges {
		switch {
		case r.Off < 0, r.Len <= 0, r.First < 0:
			return blobFault(i, j, ErrBadValue, "off %d len %d first %d", r.Off, r.Len, r.First)
		case r.Off > b.Size || r.Len > b.Size-r.Off:
			return blobFault(i, j, ErrOutsideBlob, "off %d len %d, blob size %d", r.Off, r.Len, b.Size)
		}
	}
	return nil
}

// checkRef accepts what can be an image reference's text: 1 to MaxRefLen printable ASCII
// bytes, no space. Parsing it is the fetcher's business.
func checkRef(ref string) error {
	if ref == "" {
		return errors.New("empty")
	}
	if len(ref) > MaxRefLen {
		return fmt.Errorf("%d bytes, at most %d", len(ref), MaxRefLen)
	}
	for i := range len(ref) {
		if c := ref[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("%q: byte %#x at %d", ref, c, i)
		}
	}
	return nil
}
