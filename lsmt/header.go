package lsmt

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// HeaderSize is the on-disk size of a header or trailer (the structure is
// zero-padded to one 4 KiB page).
const HeaderSize = 4096

// Header and trailer flag bits; test each on its own.
const (
	FlagHeader    = 1 << 0 // set in a header, clear in a trailer
	FlagDataFile  = 1 << 1 // data file (clear in a writable index file)
	FlagSealed    = 1 << 2 // committed or sealed
	FlagGC        = 1 << 3 // gc layer
	FlagSparse    = 1 << 4 // sparse writable file
	FlagInfoValid = 1 << 5
)

const (
	structSize   = 390
	uuidFieldLen = 37
	tagFieldLen  = 256
	nilUUID      = "00000000-0000-0000-0000-000000000000"
	// headerVersion and headerSubVersion are what upstream writes.
	headerVersion    = 1
	headerSubVersion = 1
)

var (
	magic0 = [8]byte{'L', 'S', 'M', 'T', 0, 1, 2, 0}
	magic1 = [16]byte{0x65, 0x7E, 0x63, 0xD2, 0x94, 0x44, 0x08, 0x4C, 0xA2, 0xD2, 0xC8, 0xEC, 0x4F, 0xCF, 0xAE, 0x8A}
)

// Header is an LSMT header or trailer. UUID and ParentUUID are upper-case
// "XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX" text, or "" for none (written as the
// all-zero UUID). Tag is the commit message.
type Header struct {
	Flags       uint32
	IndexOffset uint64 // bytes
	IndexSize   uint64 // records
	VirtualSize uint64 // bytes
	UUID        string
	ParentUUID  string
	Version     uint8
	SubVersion  uint8
	Tag         string
}

// MarshalBinary encodes h as HeaderSize bytes. It fails on a malformed UUID or
// a tag that does not fit its 256-byte NUL-terminated field.
func (h Header) MarshalBinary() ([]byte, error) {
	b := make([]byte, HeaderSize)
	copy(b[0:8], magic0[:])
	copy(b[8:24], magic1[:])
	binary.LittleEndian.PutUint32(b[24:28], structSize)
	binary.LittleEndian.PutUint32(b[28:32], h.Flags)
	binary.LittleEndian.PutUint64(b[32:40], h.IndexOffset)
	binary.LittleEndian.PutUint64(b[40:48], h.IndexSize)
	binary.LittleEndian.PutUint64(b[48:56], h.VirtualSize)
	for _, f := range []struct {
		name, uuid string
		at         int
	}{{"uuid", h.UUID, 56}, {"parent uuid", h.ParentUUID, 93}} {
		text, err := normalizeUUID(f.uuid)
		if err != nil {
			return nil, fmt.Errorf("lsmt: header %s: %w", f.name, err)
		}
		copy(b[f.at:f.at+uuidFieldLen-1], text)
	}
	b[132] = h.Version
	b[133] = h.SubVersion
	if len(h.Tag) >= tagFieldLen || strings.IndexByte(h.Tag, 0) >= 0 {
		return nil, fmt.Errorf("lsmt: header tag: %d bytes or NUL inside; at most %d bytes without NUL", len(h.Tag), tagFieldLen-1)
	}
	copy(b[134:134+tagFieldLen], h.Tag)
	return b, nil
}

// ParseHeader decodes a header or trailer from the first 390 bytes of b. It
// checks the magic only; callers check the flags they need.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < structSize {
		return Header{}, fmt.Errorf("%w: header of %d bytes, need %d", ErrFormat, len(b), structSize)
	}
	if !bytes.Equal(b[0:8], magic0[:]) || !bytes.Equal(b[8:24], magic1[:]) {
		return Header{}, fmt.Errorf("%w: bad magic % x", ErrFormat, b[0:8])
	}
	h := Header{
		Flags:       binary.LittleEndian.Uint32(b[28:32]),
		IndexOffset: binary.LittleEndian.Uint64(b[32:40]),
		IndexSize:   binary.LittleEndian.Uint64(b[40:48]),
		VirtualSize: binary.LittleEndian.Uint64(b[48:56]),
		Version:     b[132],
		SubVersion:  b[133],
		Tag:         cString(b[134 : 134+tagFieldLen]),
	}
	var err error
	if h.UUID, err = uuidField(b[56 : 56+uuidFieldLen]); err != nil {
		return Header{}, fmt.Errorf("%w: uuid: %w", ErrFormat, err)
	}
	if h.ParentUUID, err = uuidField(b[93 : 93+uuidFieldLen]); err != nil {
		return Header{}, fmt.Errorf("%w: parent uuid: %w", ErrFormat, err)
	}
	return h, nil
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// uuidField reads a UUID field, mapping the all-zero UUID (or an empty
// field) to "".
func uuidField(b []byte) (string, error) {
	s := cString(b)
	if s == "" || s == nilUUID {
		return "", nil
	}
	if _, err := normalizeUUID(s); err != nil {
		return "", err
	}
	return s, nil
}

// normalizeUUID returns the 36-character upper-case text of u ("" = nil UUID).
func normalizeUUID(u string) (string, error) {
	if u == "" {
		return nilUUID, nil
	}
	if len(u) != len(nilUUID) {
		return "", fmt.Errorf("%q is not a UUID", u)
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return "", fmt.Errorf("%q is not a UUID", u)
			}
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
		default:
			return "", fmt.Errorf("%q is not a UUID", u)
		}
	}
	return strings.ToUpper(u), nil
}
