package blocktrace

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestDecodeVersion1File: a trace as version 1 is written decodes to what was recorded and
// encodes to the same bytes.
func TestDecodeVersion1File(t *testing.T) {
	data, err := os.ReadFile("testdata/v1.trace")
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	want := Trace{Blobs: []Blob{
		{Ref: "registry.example.com:5000/team/app:v1", Digest: digest.FromString("layer 0"), Size: 1 << 30,
			Ranges: []Range{{Off: 0, Len: 4096, First: 3}, {Off: 65536, Len: 131072, First: 1}}},
		{Ref: "registry.example.com:5000/team/app@" + digest.FromString("manifest").String(), Digest: digest.FromString("layer 1"), Size: 12345,
			Ranges: []Range{{Off: 100, Len: 12245}}},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decoded %+v\nwant %+v", got, want)
	}
	enc, err := got.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(enc, data) {
		t.Fatalf("encoded\n%s\nwant\n%s", enc, data)
	}
}

// TestEmptyTrace: a recording that read nothing encodes as no blobs and decodes back.
func TestEmptyTrace(t *testing.T) {
	enc, err := Trace{}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"version":1,"blobs":null}` + "\n"; string(enc) != want {
		t.Fatalf("encoded %q, want %q", enc, want)
	}
	got, err := Decode(enc)
	if err != nil || got.Blobs != nil {
		t.Fatalf("Decode(%q) = %+v, %v", enc, got, err)
	}
}

func TestDecodeRejects(t *testing.T) {
	d := digest.FromString("x").String()
	blob := func(fields string) string {
		return `{"version":1,"blobs":[{"ref":"r/x","digest":"` + d + `","size":10,` + fields + `}]}`
	}
	for _, c := range []struct {
		in     string
		kind   error
		detail string
	}{
		{``, ErrSyntax, "EOF"},
		{`[]`, ErrSyntax, "want an object"},
		{`{"version":1,"blobs":[]} {}`, ErrSyntax, "data after the trace"},
		{`{"version":1,"blobs":[]`, ErrSyntax, "EOF"},
		{`{"version":"1"}`, ErrSyntax, "version"},
		{`{"blobs":[]}`, ErrVersion, "no version"},
		{`{"version":2,"blobs":[]}`, ErrVersion, "version 2, want 1"},
		{`{"version":1,"version":1}`, ErrSyntax, `field "version" twice`},
		{`{"version":1,"Blobs":[]}`, ErrSyntax, `unknown field "Blobs"`},
		{`{"version":1,"blobs":{}}`, ErrSyntax, "want a list"},
		{blob(`"ranges":[{"off":0,"len":1,"last":2}]`), ErrSyntax, `blob 0 range 0: not a trace's JSON: json: unknown field "last"`},
		{blob(`"ranges":[{"off":0.5,"len":1}]`), ErrSyntax, "off"},
		{blob(`"ranges":[]`), ErrBadValue, "no ranges"},
		{blob(`"ranges":null`), ErrBadValue, "no ranges"},
		{blob(`"ranges":[{"off":-1,"len":1}]`), ErrBadValue, "off -1"},
		{blob(`"ranges":[{"off":0,"len":0}]`), ErrBadValue, "len 0"},
		{blob(`"ranges":[{"off":0,"len":1,"first":-3}]`), ErrBadValue, "first -3"},
		{blob(`"ranges":[{"off":0,"len":1},{"off":5,"len":6}]`), ErrOutsideBlob, "blob 0 range 1: range outside its blob: off 5 len 6, blob size 10"},
		{blob(`"ranges":[{"off":11,"len":1}]`), ErrOutsideBlob, "off 11"},
		{blob(`"rangeTable":"sha256:zz","rangeTableOffset":5,"ranges":[{"off":0,"len":1}]`), ErrBadValue, "range table"},
		{blob(`"rangeTable":"` + d + `","ranges":[{"off":0,"len":1}]`), ErrBadValue, "range table offset 0"},
		{blob(`"rangeTableOffset":5,"ranges":[{"off":0,"len":1}]`), ErrBadValue, "range table"},
		{blob(`"rangeTable":"` + d + `","rangeTableOffset":10,"ranges":[{"off":0,"len":1}]`), ErrBadValue, "range table offset 10"},
		{blob(`"ranges":[{"off":1,"len":9223372036854775807}]`), ErrOutsideBlob, "off 1"},
		{`{"version":1,"blobs":[{"ref":"r/x","digest":"sha256:zz","size":1,"ranges":[{"off":0,"len":1}]}]}`, ErrBadValue, "digest"},
		{`{"version":1,"blobs":[{"digest":"` + d + `","size":1,"ranges":[{"off":0,"len":1}]}]}`, ErrBadValue, "ref: empty"},
		{`{"version":1,"blobs":[{"ref":"r/x y","digest":"` + d + `","size":1,"ranges":[{"off":0,"len":1}]}]}`, ErrBadValue, "byte 0x20"},
		{`{"version":1,"blobs":[{"ref":"r/x","digest":"` + d + `","size":0,"ranges":[{"off":0,"len":1}]}]}`, ErrBadValue, "size 0"},
		{`{"version":1,"blobs":[{"ref":"r/x","digest":"` + d + `","size":1,"ranges":[{"off":0,"len":1}]},` +
			`{"ref":"r/y","digest":"` + d + `","size":1,"ranges":[{"off":0,"len":1}]}]}`, ErrDuplicateBlob, "blob 1: blob listed twice: " + d + ", first as blob 0"},
	} {
		_, err := Decode([]byte(c.in))
		var e *Error
		if !errors.As(err, &e) || !errors.Is(err, ErrBadTrace) || !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.detail) {
			t.Errorf("Decode(%.80q): %v, want an *Error of kind %q saying %q", c.in, err, c.kind, c.detail)
		}
	}
}

// encodeRanges writes a trace of blobs blobs, of n ranges each, as JSON.
func encodeRanges(blobs, n int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"version":1,"blobs":[`)
	for i := range blobs {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"ref":"r/x","digest":"%s","size":%d,"ranges":[`, digest.FromString(fmt.Sprint(i)), 2*n)
		for j := range n {
			if j > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"off":%d,"len":1}`, 2*j)
		}
		b.WriteString(`]}`)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

func TestRangeTableRoundTrip(t *testing.T) {
	in := Trace{Blobs: []Blob{{Ref: "r/x", Digest: digest.FromString("b"), Size: 100, Ranges: []Range{{Off: 0, Len: 10, First: 1}},
		RangeTable: digest.FromString("t"), RangeTableOffset: 90}}}
	raw, err := in.Encode()
	if err != nil {
		t.Fatal(err)
	}
	out, err := Decode(raw)
	if err != nil || out.Blobs[0].RangeTable != in.Blobs[0].RangeTable || out.Blobs[0].RangeTableOffset != 90 {
		t.Fatalf("decoded %+v, %v", out, err)
	}
}

func TestDecodeLimits(t *testing.T) {
	for _, c := range []struct {
		name   string
		in     []byte
		detail string
	}{
		{"bytes", append([]byte(`{"version":1,"blobs":[]}`), bytes.Repeat([]byte(" "), MaxEncodedBytes)...), "at most 67108864"},
		{"blobs", encodeRanges(MaxBlobs+1, 1), fmt.Sprintf("blob %d: over a limit: more than %d blobs", MaxBlobs, MaxBlobs)},
		{"ranges per blob", encodeRanges(1, MaxRangesPerBlob+1), fmt.Sprintf("range %d: over a limit: more than %d ranges", MaxRangesPerBlob, MaxRangesPerBlob)},
		{"ranges", encodeRanges(MaxRanges/1000+1, 1000), fmt.Sprintf("more than %d ranges in all", MaxRanges)},
	} {
		_, err := Decode(c.in)
		if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), c.detail) {
			t.Errorf("%s: %v, want a limit error saying %q", c.name, err, c.detail)
		}
	}
	if _, err := Decode(encodeRanges(MaxRanges/MaxRangesPerBlob, MaxRangesPerBlob)); err != nil {
		t.Errorf("a trace at the limits: %v", err)
	}
}

// TestLargestTraceFits: the limits keep every valid trace's encoding under MaxEncodedBytes,
// so that what Encode writes Decode reads.
func TestLargestTraceFits(t *testing.T) {
	ref := strings.Repeat("<", MaxRefLen) // escaped as \u003c: the longest encoding per byte
	// As many ranges as can be, in as many blobs as can be, each blob with at least one.
	counts := make([]int, MaxBlobs)
	counts[0] = MaxRangesPerBlob
	counts[1] = MaxRanges - MaxRangesPerBlob - (MaxBlobs - 2)
	for i := 2; i < MaxBlobs; i++ {
		counts[i] = 1
	}
	var tr Trace
	for i, n := range counts {
		b := Blob{Ref: ref, Digest: digest.SHA512.FromString(fmt.Sprint(i)), Size: math.MaxInt64}
		for j := range n {
			// Off, Len and First of 19 digits each.
			b.Ranges = append(b.Ranges, Range{Off: 4e18 + int64(j), Len: 4e18, First: math.MaxInt64 - int64(j)})
		}
		tr.Blobs = append(tr.Blobs, b)
	}
	enc, err := tr.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if len(enc) > MaxEncodedBytes {
		t.Fatalf("the largest trace encodes to %d bytes, over MaxEncodedBytes %d", len(enc), MaxEncodedBytes)
	}
	t.Logf("the largest trace encodes to %d bytes", len(enc))
}

func FuzzDecode(f *testing.F) {
	data, err := os.ReadFile("testdata/v1.trace")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte(`{"version":1,"blobs":null}`))
	f.Add([]byte(`{"version":1,"blobs":[{"ref":"r/x","digest":"` + digest.FromString("x").String() + `","size":10,"ranges":[{"off":5,"len":6}]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tr, err := Decode(data)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, ErrBadTrace) {
				t.Fatalf("Decode: %v is not an *Error wrapping ErrBadTrace", err)
			}
			return
		}
		enc, err := tr.Encode()
		if err != nil {
			t.Fatalf("Encode of a decoded trace: %v", err)
		}
		again, err := Decode(enc)
		if err != nil {
			t.Fatalf("Decode of an encoded trace: %v", err)
		}
		if !reflect.DeepEqual(again, tr) {
			t.Fatalf("Decode(Encode(t)) = %+v, want %+v", again, tr)
		}
	})
}

// BenchmarkDecode decodes a trace the size of a python start's: 4 layers, 5000 ranges.
func BenchmarkDecode(b *testing.B) {
	data := encodeRanges(4, 1250)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}
