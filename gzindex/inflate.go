package gzindex

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// The inflater below is a plain RFC 1951/1952 decoder with the two things
// compress/flate does not offer: it reports the bit position of every deflate
// block boundary, and it can start at such a boundary with a preset window.
// Those make zran-style checkpoints possible.

// WindowSize is the deflate window: the most output a back-reference reaches.
const WindowSize = 32 << 10

// errCorrupt marks bytes that are not valid gzip/deflate.
var errCorrupt = errors.New("gzindex: corrupt gzip stream")

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errCorrupt, fmt.Sprintf(format, args...))
}

// bitReader reads a deflate bit stream (least significant bit first) from r.
type bitReader struct {
	r        io.Reader
	buf      []byte
	pos, end int
	bits     uint64
	n        uint  // valid bits in bits
	consumed int64 // bytes moved from r into bits, from the start
	base     int64 // absolute byte offset of r's first byte
	eof      bool
	err      error // a read error other than EOF
}

func (b *bitReader) reset(r io.Reader, base int64) {
	if b.buf == nil {
		b.buf = make([]byte, 64<<10)
	}
	*b = bitReader{r: r, buf: b.buf, base: base}
}

// bitPos is the absolute bit offset of the next unread bit.
func (b *bitReader) bitPos() int64 { return (b.base+b.consumed)*8 - int64(b.n) }

// refill reads more input into buf; it reports false at EOF or on error.
func (b *bitReader) refill() bool {
	if b.eof || b.err != nil {
		return false
	}
	for tries := 0; tries < 100; tries++ {
		n, err := b.r.Read(b.buf)
		b.pos, b.end = 0, n
		if err == io.EOF {
			b.eof = true
		} else if err != nil {
			b.err = err
		}
		if n > 0 {
			return true
		}
		if err != nil {
			return false
		}
	}
	b.err = io.ErrNoProgress
	return false
}

// fill loads bytes until at least want bits are held or the input ends.
func (b *bitReader) fill(want uint) {
	if b.n <= 56 && b.end-b.pos >= 8 {
		// Whole bytes at once, as many as fit the 64-bit buffer.
		k := (63 - b.n) / 8
		b.bits |= binary.LittleEndian.Uint64(b.buf[b.pos:]) << b.n
		if k < 8 {
			b.bits &= 1<<(b.n+8*k) - 1
		}
		b.pos += int(k)
		b.consumed += int64(k)
		b.n += 8 * k
		if b.n >= want {
			return
		}
	}
	for b.n < want && b.n <= 56 {
		if b.pos == b.end && !b.refill() {
			return
		}
		b.bits |= uint64(b.buf[b.pos]) << b.n
		b.pos++
		b.consumed++
		b.n += 8
	}
}

func (b *bitReader) shortErr() error {
	if b.err != nil {
		return b.err
	}
	return io.ErrUnexpectedEOF
}

// get consumes n (≤ 32) bits.
func (b *bitReader) get(n uint) (uint32, error) {
	if b.n < n {
		b.fill(n)
		if b.n < n {
			return 0, b.shortErr()
		}
	}
	v := uint32(b.bits & (1<<n - 1))
	b.bits >>= n
	b.n -= n
	return v, nil
}

// align drops the bits up to the next byte boundary.
func (b *bitReader) align() {
	d := b.n % 8
	b.bits >>= d
	b.n -= d
}

// atEOF reports whether no input is left (held bits included).
func (b *bitReader) atEOF() bool {
	if b.n > 0 {
		return false
	}
	b.fill(8)
	return b.n == 0
}

// huffman is a canonical Huffman code: a fast table for codes of up to
// fastBits bits and puff's counting decode for longer ones.
type huffman struct {
	count  [16]uint16
	symbol [288]uint16
	fast   [1 << fastBits]uint16 // symbol<<4 | length; 0 = not in the table
}

const fastBits = 10

// init builds the code from code lengths. Over-subscribed sets are refused;
// incomplete ones only as compress/flate allows them (a single code).
func (h *huffman) init(lengths []uint8) error {
	h.count = [16]uint16{}
	h.fast = [1 << fastBits]uint16{}
	for _, l := range lengths {
		h.count[l]++
	}
	h.count[0] = 0
	left := 1
	codes := 0
	for l := 1; l < 16; l++ {
		left <<= 1
		left -= int(h.count[l])
		if left < 0 {
			return corrupt("over-subscribed Huffman code")
		}
		codes += int(h.count[l])
	}
	if left > 0 && codes != 1 {
		return corrupt("incomplete Huffman code")
	}
	var offs [16]uint16
	for l := 1; l < 15; l++ {
		offs[l+1] = offs[l] + h.count[l]
	}
	for sym, l := range lengths {
		if l != 0 {
			h.symbol[offs[l]] = uint16(sym)
			offs[l]++
		}
	}
	// Fast table: assign canonical codes in order and index them bit-reversed.
	code := 0
	for l := 1; l <= fastBits; l++ {
		code <<= 1
		start := 0
		for i := 1; i < l; i++ {
			start += int(h.count[i])
		}
		for i := 0; i < int(h.count[l]); i++ {
			sym := h.symbol[start+i]
			rev := reverse(uint16(code+i), uint(l))
			for j := int(rev); j < 1<<fastBits; j += 1 << l {
				h.fast[j] = sym<<4 | uint16(l)
			}
		}
		code += int(h.count[l])
	}
	return nil
}

func reverse(v uint16, n uint) uint16 {
	var r uint16
	for i := uint(0); i < n; i++ {
		r = r<<1 | v&1
		v >>= 1
	}
	return r
}

// decode reads one symbol of h.
func (b *bitReader) decode(h *huffman) (int, error) {
	if b.n < 15 {
		b.fill(15)
	}
	if e := h.fast[b.bits&(1<<fastBits-1)]; e != 0 && uint(e&15) <= b.n {
		l := uint(e & 15)
		b.bits >>= l
		b.n -= l
		return int(e >> 4), nil
	}
	code, first, index := 0, 0, 0
	for l := uint(1); l < 16; l++ {
		if l > b.n {
			return 0, b.shortErr()
		}
		code |= int(b.bits>>(l-1)) & 1
		count := int(h.count[l])
		if code-count < first {
			b.bits >>= l
			b.n -= l
			return int(h.symbol[index+code-first]), nil
		}
		index += count
		first += count
		first <<= 1
		code <<= 1
	}
	return 0, corrupt("invalid Huffman code")
}

var (
	lengthBase  = [29]uint16{3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258}
	lengthExtra = [29]uint8{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
	distBase    = [30]uint16{1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577}
	distExtra   = [30]uint8{0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13}
	codeOrder   = [19]uint8{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}

	fixedLit, fixedDist huffman
)

func init() {
	var l [288]uint8
	for i := range l {
		switch {
		case i < 144:
			l[i] = 8
		case i < 256:
			l[i] = 9
		case i < 280:
			l[i] = 7
		default:
			l[i] = 8
		}
	}
	if err := fixedLit.init(l[:]); err != nil {
		panic(err)
	}
	// 30 codes of 5 bits are incomplete; the fixed code is valid by definition.
	fixedDist.count = [16]uint16{5: 30}
	for i := 0; i < 30; i++ {
		fixedDist.symbol[i] = uint16(i)
		for j := int(reverse(uint16(i), 5)); j < 1<<fastBits; j += 1 << 5 {
			fixedDist.fast[j] = uint16(i)<<4 | 5
		}
	}
}

type inflateState int

const (
	stMemberHeader inflateState = iota // before a gzip member header
	stBlockHeader                      // before a deflate block header
	stStored                           // inside a stored block
	stHuffman                          // inside a compressed block
	stDone                             // past the last member
)

const (
	histCap   = 4 * WindowSize
	histLimit = histCap - 258
)

// inflater decodes a gzip stream (one or more members) from a bitReader,
// exposing the uncompressed bytes through Read.
type inflater struct {
	br       bitReader
	state    inflateState
	final    bool // the current block is the member's last
	stored   int  // bytes left in a stored block
	lit      *huffman
	dist     *huffman
	dyn      [2]huffman
	hist     []byte // window + output; hist[handed:] not yet read
	handed   int
	out      int64 // absolute uncompressed offset of the end of hist
	checkCRC bool  // the current member was decoded from its start
	crc      uint32
	size     uint32 // member bytes mod 2^32

	// boundary, when set, is called at every deflate block boundary except a
	// member's first block of the stream's first member, with the bit position, the
	// uncompressed offset and the window (the last ≤ 32 KiB of output). It returns
	// true to stop decoding there (Read then returns io.EOF).
	boundary func(bit, out int64, window []byte) bool
	stopped  bool
	// refs, when set, is called for every back-reference with the absolute
	// output range [from, to) it copies from (Build's sparse windows).
	refs func(from, to int64)
	// badEnd is set by a Reader's boundary function when a span does not end
	// where its index says.
	badEnd error
}

// resetAt prepares to decode from a block boundary at absolute bit offset
// bit, with uncompressed offset out and the given window (at most WindowSize
// bytes). r supplies the blob's bytes from byte bit/8 on. bit == 0 means the
// stream's start (a gzip member header).
func (f *inflater) resetAt(r io.Reader, bit, out int64, window []byte) error {
	f.br.reset(r, bit/8)
	if f.hist == nil {
		f.hist = make([]byte, 0, histCap)
	}
	f.hist = append(f.hist[:0], window...)
	f.handed = len(f.hist)
	f.out = out
	f.final, f.stored, f.stopped = false, 0, false
	f.crc, f.size, f.checkCRC = 0, 0, false
	if bit == 0 {
		f.state = stMemberHeader
		return nil
	}
	f.state = stBlockHeader
	if _, err := f.br.get(uint(bit % 8)); err != nil {
		return err
	}
	return nil
}

// Read returns uncompressed bytes.
func (f *inflater) Read(p []byte) (int, error) {
	for f.handed == len(f.hist) {
		if f.state == stDone || f.stopped {
			return 0, io.EOF
		}
		if err := f.step(); err != nil {
			return 0, err
		}
	}
	n := copy(p, f.hist[f.handed:])
	f.handed += n
	return n, nil
}

// slide drops handed-out history beyond one window, so hist has room.
func (f *inflater) slide() {
	if f.handed == len(f.hist) && len(f.hist) > WindowSize {
		n := copy(f.hist, f.hist[len(f.hist)-WindowSize:])
		f.hist = f.hist[:n]
		f.handed = n
	}
}

func (f *inflater) window() []byte {
	return f.hist[max(0, len(f.hist)-WindowSize):]
}

// emitted accounts for output appended to hist (CRC and size of the member).
func (f *inflater) emitted(b []byte) {
	f.out += int64(len(b))
	if f.checkCRC {
		f.crc = crc32.Update(f.crc, crc32.IEEETable, b)
		f.size += uint32(len(b))
	}
}

// step advances by one state or a run of output.
func (f *inflater) step() error {
	f.slide()
	switch f.state {
	case stMemberHeader:
		if err := f.memberHeader(); err != nil {
			return err
		}
		f.checkCRC, f.crc, f.size = true, 0, 0
		f.state = stBlockHeader
		return nil
	case stBlockHeader:
		return f.blockHeader()
	case stStored:
		n := min(f.stored, histCap-len(f.hist))
		start := len(f.hist)
		f.hist = f.hist[:start+n]
		if err := f.readBytes(f.hist[start:]); err != nil {
			return err
		}
		f.emitted(f.hist[start:])
		f.stored -= n
		if f.stored == 0 {
			return f.endBlock()
		}
		return nil
	case stHuffman:
		return f.huffmanRun()
	}
	return nil
}

// readBytes reads whole bytes from a byte-aligned position.
func (f *inflater) readBytes(p []byte) error {
	for i := range p {
		if f.br.n >= 8 {
			p[i] = byte(f.br.bits)
			f.br.bits >>= 8
			f.br.n -= 8
			continue
		}
		v, err := f.br.get(8)
		if err != nil {
			return err
		}
		p[i] = byte(v)
	}
	return nil
}

// maxHeaderString bounds a member header's file name and comment, terminator included, as
// compress/gzip (which containerd unpacks layers with) does: a layer it cannot unpack is not
// served lazily either.
const maxHeaderString = 512

// memberHeader reads a gzip member header (RFC 1952 2.3), checking its CRC16 when it has one.
func (f *inflater) memberHeader() error {
	var h [10]byte
	if err := f.readBytes(h[:]); err != nil {
		return fmt.Errorf("gzip header: %w", err)
	}
	if h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 {
		return corrupt("not a gzip member header at byte %d", f.br.bitPos()/8-10)
	}
	flg := h[3]
	if flg&0xe0 != 0 {
		return corrupt("gzip header has reserved flags %#x", flg)
	}
	crc := crc32.Update(0, crc32.IEEETable, h[:])
	var b [2]byte
	if flg&4 != 0 { // FEXTRA
		if err := f.readBytes(b[:]); err != nil {
			return err
		}
		crc = crc32.Update(crc, crc32.IEEETable, b[:])
		extra := make([]byte, binary.LittleEndian.Uint16(b[:]))
		if err := f.readBytes(extra); err != nil {
			return err
		}
		crc = crc32.Update(crc, crc32.IEEETable, extra)
	}
	for _, field := range []struct {
		bit  byte
		name string
	}{{8, "file name"}, {16, "comment"}} {
		if flg&field.bit == 0 {
			continue
		}
		var err error
		if crc, err = f.headerString(crc, field.name); err != nil {
			return err
		}
	}
	if flg&2 != 0 { // FHCRC
		if err := f.readBytes(b[:]); err != nil {
			return err
		}
		if got := binary.LittleEndian.Uint16(b[:]); got != uint16(crc) {
			return corrupt("gzip header CRC16 %#04x, the header's is %#04x", got, uint16(crc))
		}
	}
	return nil
}

// headerString reads a zero-terminated header field of at most maxHeaderString bytes and
// returns crc updated with it.
func (f *inflater) headerString(crc uint32, name string) (uint32, error) {
	var c [1]byte
	for n := 1; ; n++ {
		if n > maxHeaderString {
			return crc, corrupt("gzip header %s longer than %d bytes", name, maxHeaderString-1)
		}
		if err := f.readBytes(c[:]); err != nil {
			return crc, err
		}
		crc = crc32.Update(crc, crc32.IEEETable, c[:])
		if c[0] == 0 {
			return crc, nil
		}
	}
}

func (f *inflater) blockHeader() error {
	bit := f.br.bitPos()
	if f.boundary != nil && f.boundary(bit, f.out, f.window()) {
		f.stopped = true
		return nil
	}
	h, err := f.br.get(3)
	if err != nil {
		return err
	}
	f.final = h&1 != 0
	switch h >> 1 {
	case 0:
		f.br.align()
		var b [4]byte
		if err := f.readBytes(b[:]); err != nil {
			return err
		}
		n := binary.LittleEndian.Uint16(b[0:2])
		if n != ^binary.LittleEndian.Uint16(b[2:4]) {
			return corrupt("stored block length check at bit %d", bit)
		}
		f.stored = int(n)
		f.state = stStored
		if n == 0 {
			return f.endBlock()
		}
	case 1:
		f.lit, f.dist = &fixedLit, &fixedDist
		f.state = stHuffman
	case 2:
		if err := f.dynamicHeader(); err != nil {
			return fmt.Errorf("block at bit %d: %w", bit, err)
		}
		f.lit, f.dist = &f.dyn[0], &f.dyn[1]
		f.state = stHuffman
	default:
		return corrupt("reserved block type at bit %d", bit)
	}
	return nil
}

func (f *inflater) dynamicHeader() error {
	v, err := f.br.get(14)
	if err != nil {
		return err
	}
	nlen, ndist, ncode := int(v&31)+257, int(v>>5&31)+1, int(v>>10)+4
	if nlen > 286 || ndist > 30 {
		return corrupt("too many length or distance codes")
	}
	var lengths [320]uint8
	for i := 0; i < ncode; i++ {
		c, err := f.br.get(3)
		if err != nil {
			return err
		}
		lengths[codeOrder[i]] = uint8(c)
	}
	var lencode huffman
	if err := lencode.init(lengths[:19]); err != nil {
		return err
	}
	lengths = [320]uint8{}
	for i := 0; i < nlen+ndist; {
		sym, err := f.br.decode(&lencode)
		if err != nil {
			return err
		}
		if sym < 16 {
			lengths[i] = uint8(sym)
			i++
			continue
		}
		var rep uint32
		var val uint8
		switch sym {
		case 16:
			if i == 0 {
				return corrupt("repeat with no previous length")
			}
			val = lengths[i-1]
			rep, err = f.br.get(2)
			rep += 3
		case 17:
			rep, err = f.br.get(3)
			rep += 3
		default:
			rep, err = f.br.get(7)
			rep += 11
		}
		if err != nil {
			return err
		}
		if i+int(rep) > nlen+ndist {
			return corrupt("code lengths overflow")
		}
		for ; rep > 0; rep-- {
			lengths[i] = val
			i++
		}
	}
	if lengths[256] == 0 {
		return corrupt("no end-of-block code")
	}
	if err := f.dyn[0].init(lengths[:nlen]); err != nil {
		return err
	}
	return f.dyn[1].init(lengths[nlen : nlen+ndist])
}

// huffmanRun decodes symbols until the block ends or hist is nearly full.
func (f *inflater) huffmanRun() error {
	start := len(f.hist)
	defer func() { f.emitted(f.hist[start:]) }()
	for len(f.hist) < histLimit {
		sym, err := f.br.decode(f.lit)
		if err != nil {
			return err
		}
		if sym < 256 {
			f.hist = append(f.hist, byte(sym))
			continue
		}
		if sym == 256 {
			f.emitted(f.hist[start:])
			start = len(f.hist)
			return f.endBlock()
		}
		sym -= 257
		if sym >= 29 {
			return corrupt("invalid length symbol %d", sym+257)
		}
		e, err := f.br.get(uint(lengthExtra[sym]))
		if err != nil {
			return err
		}
		length := int(lengthBase[sym]) + int(e)
		ds, err := f.br.decode(f.dist)
		if err != nil {
			return err
		}
		if ds >= 30 {
			return corrupt("invalid distance symbol %d", ds)
		}
		e, err = f.br.get(uint(distExtra[ds]))
		if err != nil {
			return err
		}
		dist := int(distBase[ds]) + int(e)
		n := len(f.hist)
		if dist > n {
			return corrupt("distance %d reaches before the window at output %d", dist, f.out+int64(n-start))
		}
		if f.refs != nil {
			at := f.out + int64(n-start)
			f.refs(at-int64(dist), at-int64(dist)+int64(length))
		}
		f.hist = f.hist[:n+length]
		if dist >= length {
			copy(f.hist[n:], f.hist[n-dist:n-dist+length])
		} else {
			for i := n; i < n+length; i++ {
				f.hist[i] = f.hist[i-dist]
			}
		}
	}
	return nil
}

// endBlock moves past a finished block: to the next block, or to the
// member's trailer and the next member or the end.
func (f *inflater) endBlock() error {
	if !f.final {
		f.state = stBlockHeader
		return nil
	}
	f.br.align()
	var t [8]byte
	if err := f.readBytes(t[:]); err != nil {
		return fmt.Errorf("gzip trailer: %w", err)
	}
	if f.checkCRC {
		if binary.LittleEndian.Uint32(t[0:4]) != f.crc || binary.LittleEndian.Uint32(t[4:8]) != f.size {
			return corrupt("gzip member checksum or size mismatch")
		}
	}
	if f.br.atEOF() {
		if f.br.err != nil {
			return f.br.err
		}
		f.state = stDone
		return nil
	}
	f.state = stMemberHeader
	return nil
}
