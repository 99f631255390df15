package lsmt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestOpenCorrupt damages A.commit.plain.lsmt in the ways upstream validates
// and expects a clear ErrFormat for each.
func TestOpenCorrupt(t *testing.T) {
	orig, err := os.ReadFile(filepath.Join(refDir, "A.commit.plain.lsmt"))
	if err != nil {
		t.Fatal(err)
	}
	size := len(orig)
	trailer := size - HeaderSize
	indexOff := int(binary.LittleEndian.Uint64(orig[trailer+32:]))
	record := func(b []byte, i int) []byte { return b[indexOff+i*RecordSize:] }
	setRecord := func(b []byte, i int, f func(*Segment)) {
		s := DecodeSegment(record(b, i))
		f(&s)
		EncodeSegment(s, record(b, i))
	}
	cases := []struct {
		name   string
		damage func([]byte) []byte
	}{
		{"header magic", func(b []byte) []byte { b[3] ^= 0xFF; return b }},
		{"header magic1", func(b []byte) []byte { b[20] ^= 0x01; return b }},
		{"trailer magic", func(b []byte) []byte { b[trailer] ^= 0xFF; return b }},
		{"trailer with header bit", func(b []byte) []byte { b[trailer+28] |= FlagHeader; return b }},
		{"truncated to 100 bytes", func(b []byte) []byte { return b[:100] }},
		{"truncated mid-data", func(b []byte) []byte { return b[:size/2] }},
		{"truncated by one sector", func(b []byte) []byte { return b[:size-SectorSize] }},
		{"index past end", func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[trailer+32:], uint64(size))
			return b
		}},
		{"index size huge", func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[trailer+40:], 1<<60)
			return b
		}},
		{"index offset unaligned", func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[trailer+32:], uint64(indexOff+8))
			return b
		}},
		{"records unsorted", func(b []byte) []byte {
			var tmp [RecordSize]byte
			copy(tmp[:], record(b, 0))
			copy(record(b, 0), record(b, 3)[:RecordSize])
			copy(record(b, 3), tmp[:])
			return b
		}},
		{"records overlap", func(b []byte) []byte {
			setRecord(b, 1, func(s *Segment) { s.Offset-- })
			return b
		}},
		{"moffset below 8", func(b []byte) []byte {
			setRecord(b, 0, func(s *Segment) { s.MOffset = 7 })
			return b
		}},
		{"record past data end", func(b []byte) []byte {
			setRecord(b, 10, func(s *Segment) { s.MOffset = uint64(indexOff)/SectorSize - 1 })
			return b
		}},
		{"zero-length record", func(b []byte) []byte {
			setRecord(b, 2, func(s *Segment) { s.Length = 0 })
			return b
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.damage(bytes.Clone(orig))
			_, err := Open(bytes.NewReader(b), int64(len(b)), WithName("damaged"))
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("Open: %v, want ErrFormat", err)
			}
			t.Log(err)
		})
	}
	// A zeroed record's moffset is ignored, as upstream does.
	b := bytes.Clone(orig)
	setRecord(b, 1, func(s *Segment) { s.MOffset = 0 })
	if _, err := Open(bytes.NewReader(b), int64(len(b))); err != nil {
		t.Errorf("zeroed record with moffset 0: %v", err)
	}
}

// TestOpenWritableBadRecords: a bad first record (as a power loss or bit rot leaves) is
// where replay stops: the layer opens, empty, with every record dropped.
func TestOpenWritableBadRecords(t *testing.T) {
	for name, damage := range map[string]func(*Segment){
		"record past data end":     func(s *Segment) { s.MOffset = 479 },
		"record past virtual size": func(s *Segment) { s.Offset = refVSize / SectorSize },
		"moffset below 8":          func(s *Segment) { s.MOffset = 0 },
	} {
		t.Run(name, func(t *testing.T) {
			dir := refWritableDir(t)
			path := filepath.Join(dir, IndexFileName)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			s := DecodeSegment(b[HeaderSize:])
			damage(&s)
			EncodeSegment(s, b[HeaderSize:])
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			w, err := OpenWritable(dir)
			if err != nil {
				t.Fatalf("OpenWritable: %v", err)
			}
			defer w.Close()
			if got, want := w.DroppedRecords(), (len(b)-HeaderSize)/RecordSize; got != want || len(w.Segments()) != 0 {
				t.Errorf("dropped %d records, %d segments left; want all %d dropped", got, len(w.Segments()), want)
			}
		})
	}
}

func TestOpenWritableCorrupt(t *testing.T) {
	cases := []struct {
		name   string
		file   string
		damage func([]byte) []byte
	}{
		{"data header magic", DataFileName, func(b []byte) []byte { b[0] = 'X'; return b }},
		{"data file is an index", DataFileName, func(b []byte) []byte { b[28] = FlagHeader; return b }},
		{"data file truncated", DataFileName, func(b []byte) []byte { return b[:100] }},
		{"index header magic", IndexFileName, func(b []byte) []byte { b[9] ^= 1; return b }},
		{"index is a data file", IndexFileName, func(b []byte) []byte { b[28] = FlagHeader | FlagDataFile; return b }},
		{"index truncated into header", IndexFileName, func(b []byte) []byte { return b[:HeaderSize-1] }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := refWritableDir(t)
			path := filepath.Join(dir, c.file)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, c.damage(b), 0o644); err != nil {
				t.Fatal(err)
			}
			w, err := OpenWritable(dir)
			if !errors.Is(err, ErrFormat) {
				if w != nil {
					w.Close()
				}
				t.Fatalf("OpenWritable: %v, want ErrFormat", err)
			}
			t.Log(err)
		})
	}
}
