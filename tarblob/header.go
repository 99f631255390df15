package tarblob

import (
	"bytes"
	"fmt"
	"strconv"
)

// blockSize is the tar record unit: every header and every payload is padded to it.
const blockSize = 512

// Field positions inside a 512-byte tar header (POSIX ustar; GNU shares the first 345 bytes).
const (
	nameOff, nameLen         = 0, 100
	modeOff, modeLen         = 100, 8
	uidOff, uidLen           = 108, 8
	gidOff, gidLen           = 116, 8
	sizeOff, sizeLen         = 124, 12
	mtimeOff, mtimeLen       = 136, 12
	chksumOff, chksumLen     = 148, 8
	typeflagOff              = 156
	magicOff                 = 257
	versionOff               = 263
	unameOff, unameLen       = 265, 32
	gnameOff, gnameLen       = 297, 32
	prefixOff, prefixLen     = 345, 155
	ustarMagic, ustarVersion = "ustar\x00", "00"
)

// Type flags this package handles.
const (
	typeRegular    = '0'
	typeRegularOld = '\x00'
	typePAX        = 'x'
	typePAXGlobal  = 'g'
	typeGNULong    = 'L'
	typeGNULink    = 'K'
)

// isZeroBlock reports whether b is an end-of-archive block.
func isZeroBlock(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// cString returns b up to its first NUL.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// parseNumeric decodes a tar numeric field: octal text padded with spaces or NULs, or the
// GNU base-256 form (high bit of the first byte set) for values that do not fit in octal.
func parseNumeric(b []byte) (int64, error) {
	if len(b) > 0 && b[0]&0x80 != 0 {
		if b[0]&0x40 != 0 {
			return 0, fmt.Errorf("negative base-256 number")
		}
		var v uint64
		for i, c := range b {
			if i == 0 {
				c &= 0x7f
			}
			if v>>56 != 0 {
				return 0, fmt.Errorf("base-256 number overflows int64")
			}
			v = v<<8 | uint64(c)
		}
		if v > 1<<63-1 {
			return 0, fmt.Errorf("base-256 number overflows int64")
		}
		return int64(v), nil
	}
	s := string(bytes.Trim(b, " \x00"))
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseInt(s, 8, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad octal number %q", s)
	}
	return v, nil
}

// checksumOK verifies the header checksum. The sum is taken over all bytes with the checksum
// field read as spaces; historic writers used signed bytes, so both sums are accepted.
func checksumOK(hdr []byte) bool {
	want, err := parseNumeric(hdr[chksumOff : chksumOff+chksumLen])
	if err != nil {
		return false
	}
	unsigned, signed := headerSums(hdr)
	return want == unsigned || want == signed
}

// headerSums returns the unsigned and signed byte sums of hdr with its checksum field
// counted as spaces.
func headerSums(hdr []byte) (unsigned, signed int64) {
	for i, c := range hdr {
		if i >= chksumOff && i < chksumOff+chksumLen {
			c = ' '
		}
		unsigned += int64(c)
		signed += int64(int8(c))
	}
	return unsigned, signed
}

// headerName is the entry name a header carries by itself: ustar splits long names into
// prefix "/" name; the GNU format reuses the prefix bytes for other fields.
func headerName(hdr []byte) string {
	name := cString(hdr[nameOff : nameOff+nameLen])
	if string(hdr[magicOff:magicOff+6]) == ustarMagic {
		if prefix := cString(hdr[prefixOff : prefixOff+prefixLen]); prefix != "" {
			name = prefix + "/" + name
		}
	}
	return name
}

// paxRecords parses PAX extended header data: records of the form "<len> <key>=<value>\n",
// where <len> counts the whole record including its own digits and the newline.
func paxRecords(data []byte) (map[string]string, error) {
	recs := make(map[string]string)
	for len(data) > 0 {
		sp := bytes.IndexByte(data, ' ')
		if sp <= 0 {
			// Writers may pad the data with NULs after the last record.
			if isZeroBlock(data) {
				break
			}
			return nil, fmt.Errorf("PAX record without length")
		}
		n, err := strconv.Atoi(string(data[:sp]))
		if err != nil || n <= sp+1 || n > len(data) {
			return nil, fmt.Errorf("PAX record length %q invalid", data[:sp])
		}
		rec := data[sp+1 : n]
		if rec[len(rec)-1] != '\n' {
			return nil, fmt.Errorf("PAX record not terminated by a newline")
		}
		kv := rec[:len(rec)-1]
		eq := bytes.IndexByte(kv, '=')
		if eq <= 0 {
			return nil, fmt.Errorf("PAX record %q has no key", kv)
		}
		recs[string(kv[:eq])] = string(kv[eq+1:])
		data = data[n:]
	}
	return recs, nil
}

// formatOctal writes v as zero-padded octal followed by a NUL, filling the field.
func formatOctal(field []byte, v int64) {
	s := strconv.FormatInt(v, 8)
	for len(s) < len(field)-1 {
		s = "0" + s
	}
	copy(field, s)
	field[len(field)-1] = 0
}

// fitsOctal reports whether v fits an octal field of n bytes (n-1 digits plus a NUL).
func fitsOctal(v int64, n int) bool {
	return v >= 0 && v < int64(1)<<(3*(n-1))
}

// newHeader builds a ustar header block for a root-owned entry with mtime 0.
func newHeader(name string, typeflag byte, mode, size int64) []byte {
	hdr := make([]byte, blockSize)
	copy(hdr[nameOff:nameOff+nameLen], name)
	formatOctal(hdr[modeOff:modeOff+modeLen], mode)
	formatOctal(hdr[uidOff:uidOff+uidLen], 0)
	formatOctal(hdr[gidOff:gidOff+gidLen], 0)
	formatOctal(hdr[sizeOff:sizeOff+sizeLen], size)
	formatOctal(hdr[mtimeOff:mtimeOff+mtimeLen], 0)
	hdr[typeflagOff] = typeflag
	copy(hdr[magicOff:], ustarMagic)
	copy(hdr[versionOff:], ustarVersion)
	copy(hdr[unameOff:unameOff+unameLen], "root")
	copy(hdr[gnameOff:gnameOff+gnameLen], "root")
	sum, _ := headerSums(hdr)
	// Checksum field: six octal digits, NUL, space (the POSIX form).
	formatOctal(hdr[chksumOff:chksumOff+7], sum)
	hdr[chksumOff+7] = ' '
	return hdr
}
