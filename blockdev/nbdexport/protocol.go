package nbdexport

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire constants of the NBD protocol (fixed newstyle negotiation, simple replies), as
// documented in the NBD project's doc/proto.md.
const (
	magicNBD        = 0x4e42444d41474943 // "NBDMAGIC"
	magicOption     = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply   = 0x0003e889045565a9
	magicRequest    = 0x25609513
	magicSimpleRepl = 0x67446698

	handshakeFixedNewstyle = 1 << 0
	handshakeNoZeroes      = 1 << 1

	optExportName = 1
	optAbort      = 2
	optList       = 3
	optInfo       = 6
	optGo         = 7

	repAck       = 1
	repServer    = 2
	repInfo      = 3
	repErrUnsup  = 1<<31 + 1
	repErrInval  = 1<<31 + 3
	repErrUnkown = 1<<31 + 6

	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3

	flagHasFlags       = 1 << 0
	flagReadOnly       = 1 << 1
	flagSendFlush      = 1 << 2
	flagSendFUA        = 1 << 3
	flagSendTrim       = 1 << 5
	flagSendWriteZeros = 1 << 6
	flagCanMultiConn   = 1 << 8

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisconnect  = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdWriteZeroes = 6

	cmdFlagFUA    = 1 << 0
	cmdFlagNoHole = 1 << 1

	errPerm    = 1
	errIO      = 5
	errInval   = 22
	errNoSpace = 28

	requestHeaderLen = 28

	// maxOptionLen bounds what a client may make us read during negotiation.
	maxOptionLen = 64 << 10
	// maxPayload is the largest read or write request served (32 MiB, as the
	// protocol recommends servers accept).
	maxPayload = 32 << 20
)

// ErrProtocol reports a client that broke the protocol; the connection is dropped.
var ErrProtocol = errors.New("nbdexport: protocol violation")

// request is one transmission-phase command header.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	offset uint64
	length uint32
}

// parseRequest decodes a 28-byte request header.
func parseRequest(b []byte) (request, error) {
	if len(b) != requestHeaderLen {
		return request{}, fmt.Errorf("%w: request header of %d bytes", ErrProtocol, len(b))
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != magicRequest {
		return request{}, fmt.Errorf("%w: request magic %#x", ErrProtocol, m)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		typ:    binary.BigEndian.Uint16(b[6:8]),
		handle: binary.BigEndian.Uint64(b[8:16]),
		offset: binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// infoRequest is the payload of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	name  string
	infos []uint16
}

// parseInfoRequest decodes an NBD_OPT_INFO/NBD_OPT_GO payload: name length, name,
// number of information requests, requests.
func parseInfoRequest(b []byte) (infoRequest, error) {
	if len(b) < 6 {
		return infoRequest{}, fmt.Errorf("%w: info option of %d bytes", ErrProtocol, len(b))
	}
	n := binary.BigEndian.Uint32(b[0:4])
	if uint64(n)+6 > uint64(len(b)) {
		return infoRequest{}, fmt.Errorf("%w: export name of %d bytes in %d-byte option", ErrProtocol, n, len(b))
	}
	r := infoRequest{name: string(b[4 : 4+n])}
	rest := b[4+n:]
	count := int(binary.BigEndian.Uint16(rest[0:2]))
	rest = rest[2:]
	if len(rest) != 2*count {
		return infoRequest{}, fmt.Errorf("%w: %d info requests in %d bytes", ErrProtocol, count, len(rest))
	}
	for i := range count {
		r.infos = append(r.infos, binary.BigEndian.Uint16(rest[2*i:]))
	}
	return r, nil
}
