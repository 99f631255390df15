package zfile

import "fmt"

// Algorithm is the block compression algorithm, as stored in the ZFile's algo byte.
type Algorithm uint8

// The algorithms of docs/FORMAT.md (the algo field).
const (
	LZ4  Algorithm = 1 // raw LZ4 block format, no frame
	ZSTD Algorithm = 2 // one complete zstd frame per block
)

// ParseAlgorithm parses "lz4" or "zstd".
func ParseAlgorithm(s string) (Algorithm, error) {
	switch s {
	case "lz4":
		return LZ4, nil
	case "zstd":
		return ZSTD, nil
	}
	return 0, fmt.Errorf("zfile: unknown compression algorithm %q (want lz4 or zstd)", s)
}

// String returns "lz4", "zstd", or a description of an unknown value.
func (a Algorithm) String() string {
	switch a {
	case LZ4:
		return "lz4"
	case ZSTD:
		return "zstd"
	}
	return fmt.Sprintf("algorithm(%d)", uint8(a))
}
