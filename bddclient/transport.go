package bddclient

import (
	"fmt"

	bddv1 "github.com/obdproject/obd/api/bdd/v1"
)

// Transport names, as bdd's config and the command lines of its clients spell them.
const (
	TransportFUSE = "fuse"
	TransportNBD  = "nbd"
)

// ParseTransport maps a transport name to its API value.
func ParseTransport(name string) (bddv1.Transport, error) {
	switch name {
	case TransportFUSE:
		return bddv1.Transport_TRANSPORT_FUSE, nil
	case TransportNBD:
		return bddv1.Transport_TRANSPORT_NBD, nil
	}
	return 0, fmt.Errorf("unknown transport %q: want %s or %s", name, TransportFUSE, TransportNBD)
}

// TransportName is the inverse of ParseTransport; TRANSPORT_UNSPECIFIED gives "".
func TransportName(t bddv1.Transport) string {
	switch t {
	case bddv1.Transport_TRANSPORT_FUSE:
		return TransportFUSE
	case bddv1.Transport_TRANSPORT_NBD:
		return TransportNBD
	}
	return ""
}
