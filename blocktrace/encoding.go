package blocktrace

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
)

// Version is the version of the encoding Encode writes and Decode reads.
const Version = 1

// Encode returns t encoded: one line of JSON, {"version":1,"blobs":[...]} with the fields of
// Trace, Blob and Range as their tags name them. It fails, with an *Error, on a trace that
// Validate refuses, so that whatever it returns Decode reads back as t.
func (t Trace) Encode() ([]byte, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(struct {
		Version int `json:"version"`
		Trace
	}{Version, t})
	if err != nil {
		return nil, fmt.Errorf("blocktrace: encode: %w", err)
	}
	return append(b, '\n'), nil
}

// Decode parses an encoded trace and validates it (Validate). It reads data as untrusted:
// it refuses more than MaxEncodedBytes, stops reading a list as soon as it passes its limit,
// and refuses unknown fields, data after the trace and, but in a range, a field given twice.
// Every error is an *Error wrapping ErrBadTrace.
func Decode(data []byte) (Trace, error) {
	if len(data) > MaxEncodedBytes {
		return Trace{}, fault(ErrLimit, "%d bytes, at most %d", len(data), MaxEncodedBytes)
	}
	d := decoder{json: json.NewDecoder(bytes.NewReader(data)), blob: -1, rng: -1}
	d.json.DisallowUnknownFields() // in ranges; the decoder's own fields it checks itself
	t, err := d.trace()
	if err != nil {
		return Trace{}, err
	}
	if _, err := d.json.Token(); err != io.EOF {
		return Trace{}, d.fault(ErrSyntax, "data after the trace")
	}
	if err := t.Validate(); err != nil {
		return Trace{}, err
	}
	return t, nil
}

// decoder reads a trace one JSON token or value at a time, so that no list grows past its
// limit, and knows where it is for its errors.
type decoder struct {
	json      *json.Decoder
	blob, rng int // indexes of the blob and range being read, -1 outside one
	ranges    int // ranges read so far, of all blobs
}

func (d *decoder) fault(kind error, format string, args ...any) error {
	return blobFault(d.blob, d.rng, kind, format, args...)
}

func (d *decoder) trace() (Trace, error) {
	var t Trace
	version := 0
	err := d.object(func(key string) error {
		switch key {
		case "version":
			if err := d.value(key, &version); err != nil {
				return err
			}
			if version != Version {
				return d.fault(ErrVersion, "version %d, want %d", version, Version)
			}
			return nil
		case "blobs":
			return d.list(key, func(n int) error {
				d.blob = n
				if n == MaxBlobs {
					return d.fault(ErrLimit, "more than %d blobs", MaxBlobs)
				}
				b, err := d.blobValue()
				t.Blobs = append(t.Blobs, b)
				d.blob = -1
				return err
			}, func() { t.Blobs = []Blob{} })
		}
		return d.fault(ErrSyntax, "unknown field %q", key)
	})
	if err != nil {
		return Trace{}, err
	}
	if version == 0 {
		return Trace{}, d.fault(ErrVersion, "no version")
	}
	return t, nil
}

func (d *decoder) blobValue() (Blob, error) {
	var b Blob
	err := d.object(func(key string) error {
		switch key {
		case "ref":
			return d.value(key, &b.Ref)
		case "digest":
			return d.value(key, &b.Digest)
		case "size":
			return d.value(key, &b.Size)
		case "rangeTable":
			return d.value(key, &b.RangeTable)
		case "rangeTableOffset":
			return d.value(key, &b.RangeTableOffset)
		case "ranges":
			return d.list(key, func(n int) error {
				d.rng = n
				if n == MaxRangesPerBlob {
					return d.fault(ErrLimit, "more than %d ranges", MaxRangesPerBlob)
				}
				if d.ranges == MaxRanges {
					return d.fault(ErrLimit, "more than %d ranges in all", MaxRanges)
				}
				d.ranges++
				r, err := d.rangeValue()
				b.Ranges = append(b.Ranges, r)
				d.rng = -1
				return err
			}, func() { b.Ranges = []Range{} })
		}
		return d.fault(ErrSyntax, "unknown field %q", key)
	})
	return b, err
}

// rangeValue reads a range with encoding/json (it is of fixed size, and the most common
// value by far: this is three times faster than reading its fields one by one).
func (d *decoder) rangeValue() (Range, error) {
	var r Range
	if err := d.json.Decode(&r); err != nil {
		return Range{}, d.fault(ErrSyntax, "%v", err)
	}
	return r, nil
}

// object reads a JSON object, handing each key to field, which reads its value.
func (d *decoder) object(field func(key string) error) error {
	if err := d.delim('{', "an object"); err != nil {
		return err
	}
	var seen []string // an object's known fields are few; unknown ones end it
	for d.json.More() {
		tok, err := d.json.Token()
		if err != nil {
			return d.fault(ErrSyntax, "%v", err)
		}
		key, _ := tok.(string)
		for _, k := range seen {
			if k == key {
				return d.fault(ErrSyntax, "field %q twice", key)
			}
		}
		seen = append(seen, key)
		if err := field(key); err != nil {
			return err
		}
	}
	return d.delim('}', "the end of an object")
}

// list reads a JSON list, or null, calling elem with each element's index to read it, and
// empty when the list is there but has no elements.
func (d *decoder) list(key string, elem func(n int) error, empty func()) error {
	tok, err := d.json.Token()
	if err != nil {
		return d.fault(ErrSyntax, "%s: %v", key, err)
	}
	if tok == nil {
		return nil
	}
	if tok != json.Delim('[') {
		return d.fault(ErrSyntax, "%s: %v, want a list", key, tok)
	}
	empty()
	for n := 0; d.json.More(); n++ {
		if err := elem(n); err != nil {
			return err
		}
	}
	return d.delim(']', "the end of "+key)
}

// value reads one JSON value of field key into v, a string or number.
func (d *decoder) value(key string, v any) error {
	if err := d.json.Decode(v); err != nil {
		return d.fault(ErrSyntax, "%s: %v", key, err)
	}
	return nil
}

// delim reads the delimiter want, described as what.
func (d *decoder) delim(want json.Delim, what string) error {
	tok, err := d.json.Token()
	if err != nil {
		return d.fault(ErrSyntax, "want %s: %v", what, err)
	}
	if tok != want {
		return d.fault(ErrSyntax, "%v, want %s", tok, what)
	}
	return nil
}
