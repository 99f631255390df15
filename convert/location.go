package convert

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
)

// layoutPrefix marks an OCI image layout directory: "oci:DIR[:TAG]".
const layoutPrefix = "oci:"

// Location is where an image is read from or written to: an OCI image layout
// directory (Dir, Tag) or a registry reference (Ref).
type Location struct {
	Dir string // OCI layout directory; "" for a registry
	Tag string // tag inside the layout ("" = the only image for a source, "latest" for a destination)
	Ref string // normalized registry reference, e.g. docker.io/library/busybox:latest
}

// ParseLocation parses "oci:DIR[:TAG]" or a registry reference.
func ParseLocation(s string) (Location, error) {
	if rest, ok := strings.CutPrefix(s, layoutPrefix); ok {
		dir, tag := rest, ""
		if i := strings.LastIndexByte(rest, ':'); i >= 0 {
			dir, tag = rest[:i], rest[i+1:]
		}
		if dir == "" {
			return Location{}, fmt.Errorf("convert: %q: empty layout directory", s)
		}
		return Location{Dir: dir, Tag: tag}, nil
	}
	named, err := reference.ParseDockerRef(s)
	if err != nil {
		return Location{}, fmt.Errorf("convert: image reference %q: %w", s, err)
	}
	return Location{Ref: named.String()}, nil
}

func (l Location) String() string {
	if l.Dir == "" {
		return l.Ref
	}
	if l.Tag == "" {
		return layoutPrefix + l.Dir
	}
	return layoutPrefix + l.Dir + ":" + l.Tag
}
