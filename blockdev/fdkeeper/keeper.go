// Package fdkeeper keeps file descriptors alive across daemon restarts. A small keeper
// process (bdd runs one as its `bdd fdkeeper` subcommand) holds the /dev/fuse descriptors of fuseloop devices and
// hands them back over a unix socket (SCM_RIGHTS), so that a FUSE connection outlives
// a crashed daemon and a restarted one can resume serving it (fuseloop.Resume). It sits
// beside the blockdev box of docs/DESIGN.md, not in the read path.
//
// The protocol is one JSON message per SOCK_SEQPACKET packet, with at most one
// descriptor attached: a request {"op","key"} and a response {"error","keys"}.
package fdkeeper

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// ErrNotFound is returned when the keeper holds nothing under a key.
var ErrNotFound = errors.New("fdkeeper: no descriptor under that key")

const (
	opPut  = "put"
	opGet  = "get"
	opDrop = "drop"
	opKeys = "keys"

	maxMessage = 4096
	maxKeyLen  = 1024
)

type request struct {
	Op  string `json:"op"`
	Key string `json:"key,omitempty"`
}

type response struct {
	Error    string   `json:"error,omitempty"`
	NotFound bool     `json:"not_found,omitempty"`
	Keys     []string `json:"keys,omitempty"`
}

// parseRequest decodes and validates one request packet.
func parseRequest(b []byte) (request, error) {
	var r request
	if err := json.Unmarshal(b, &r); err != nil {
		return request{}, fmt.Errorf("fdkeeper: bad request: %w", err)
	}
	switch r.Op {
	case opPut, opGet, opDrop:
		if r.Key == "" || len(r.Key) > maxKeyLen || !utf8.ValidString(r.Key) {
			return request{}, fmt.Errorf("fdkeeper: %s: bad key of %d bytes", r.Op, len(r.Key))
		}
	case opKeys:
	default:
		return request{}, fmt.Errorf("fdkeeper: unknown op %q", r.Op)
	}
	return r, nil
}
