package traceartifact

import (
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdproject/obd/blocktrace"
)

// This file is all the package knows of the block trace encoding.

// Summary counts a block trace.
type Summary struct {
	Blobs, Ranges int
	Bytes         int64 // the ranges' total length: what a replay fetches
}

// Summarize decodes a block trace and counts it.
func Summarize(blocks []byte) (Summary, error) {
	t, err := decodeBlocks(blocks)
	if err != nil {
		return Summary{}, err
	}
	return summarize(t), nil
}

// CheckPlausible returns an error wrapping ErrImplausibleTrace for a trace that cannot have
// recorded a container start: no ranges, or fewer than MinTracedBytes.
func (s Summary) CheckPlausible() error {
	if s.Ranges == 0 || s.Bytes < MinTracedBytes {
		return fmt.Errorf("%w: %d ranges, %d bytes traced (a start reads at least %d bytes of its image; "+
			"the page cache, or bdd's cache, likely served the start's reads)", ErrImplausibleTrace, s.Ranges, s.Bytes, MinTracedBytes)
	}
	return nil
}

func decodeBlocks(data []byte) (blocktrace.Trace, error) {
	if len(data) > MaxBlocksBytes {
		return blocktrace.Trace{}, fmt.Errorf("%w: block trace of %d bytes, cap %d", ErrTooLarge, len(data), MaxBlocksBytes)
	}
	t, err := blocktrace.Decode(data)
	if err != nil {
		return blocktrace.Trace{}, fmt.Errorf("%w: %w", ErrBadTrace, err)
	}
	return t, nil
}

func summarize(t blocktrace.Trace) Summary {
	s := Summary{Blobs: len(t.Blobs)}
	for _, b := range t.Blobs {
		s.Ranges += len(b.Ranges)
		for _, r := range b.Ranges {
			s.Bytes += r.Len
		}
	}
	return s
}

// fitBlocks checks that every blob of a block trace is one of layers (digest, and size unless
// the layer's is 0: unknown to the caller, who checks it later) and
// that every range lies inside its blob, and returns the trace re-encoded with every blob's
// reference set to ref: the image's repository, never one a registry's artifact names.
func fitBlocks(data []byte, layers []ocispec.Descriptor, ref string) ([]byte, Summary, error) {
	t, err := decodeBlocks(data)
	if err != nil {
		return nil, Summary{}, err
	}
	sizes := make(map[string]int64, len(layers))
	for _, l := range layers {
		sizes[l.Digest.String()] = l.Size
	}
	for i := range t.Blobs {
		b := &t.Blobs[i]
		size, ok := sizes[b.Digest.String()]
		if !ok {
			return nil, Summary{}, fmt.Errorf("%w: blob %s is not a layer of the image", ErrBadTrace, b.Digest)
		}
		if size != 0 && b.Size != size {
			return nil, Summary{}, fmt.Errorf("%w: blob %s has size %d in the trace, %d in the image", ErrBadTrace, b.Digest, b.Size, size)
		}
		// Decode checked every range against b.Size.
		b.Ref = ref
	}
	out, err := t.Encode()
	if err != nil {
		return nil, Summary{}, fmt.Errorf("%w: %w", ErrBadTrace, err)
	}
	return out, summarize(t), nil
}
