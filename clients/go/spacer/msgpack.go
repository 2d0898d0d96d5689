package spacer

// The few MessagePack shapes of the protocol, by hand: an encoder for the
// request map and a strict, bounded reader for the response map. Nothing
// here allocates more than the datagram it reads from could hold.

import (
	"errors"
	"math"
	"unicode/utf8"
)

// encoder appends MessagePack values in their shortest form, as the
// broker's own encoder (rmp-serde) writes them, so that a request is byte
// for byte what the Rust client sends.
type encoder struct{ b []byte }

func (e *encoder) mapHeader(n int) {
	switch {
	case n < 16:
		e.b = append(e.b, 0x80|byte(n))
	case n <= math.MaxUint16:
		e.b = append(e.b, 0xde, byte(n>>8), byte(n))
	default:
		e.b = append(e.b, 0xdf, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

func (e *encoder) arrayHeader(n int) {
	switch {
	case n < 16:
		e.b = append(e.b, 0x90|byte(n))
	case n <= math.MaxUint16:
		e.b = append(e.b, 0xdc, byte(n>>8), byte(n))
	default:
		e.b = append(e.b, 0xdd, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

func (e *encoder) str(s string) {
	n := len(s)
	switch {
	case n < 32:
		e.b = append(e.b, 0xa0|byte(n))
	case n <= math.MaxUint8:
		e.b = append(e.b, 0xd9, byte(n))
	case n <= math.MaxUint16:
		e.b = append(e.b, 0xda, byte(n>>8), byte(n))
	default:
		e.b = append(e.b, 0xdb, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	e.b = append(e.b, s...)
}

func (e *encoder) bool(v bool) {
	if v {
		e.b = append(e.b, 0xc3)
	} else {
		e.b = append(e.b, 0xc2)
	}
}

func (e *encoder) uint(v uint64) {
	switch {
	case v < 128:
		e.b = append(e.b, byte(v))
	case v <= math.MaxUint8:
		e.b = append(e.b, 0xcc, byte(v))
	case v <= math.MaxUint16:
		e.b = append(e.b, 0xcd, byte(v>>8), byte(v))
	case v <= math.MaxUint32:
		e.b = append(e.b, 0xce, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	default:
		e.b = append(e.b, 0xcf, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32),
			byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
}

func (e *encoder) int(v int64) {
	switch {
	case v >= 0:
		e.uint(uint64(v))
	case v >= -32:
		e.b = append(e.b, byte(v))
	case v >= math.MinInt8:
		e.b = append(e.b, 0xd0, byte(v))
	case v >= math.MinInt16:
		e.b = append(e.b, 0xd1, byte(v>>8), byte(v))
	case v >= math.MinInt32:
		e.b = append(e.b, 0xd2, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	default:
		e.b = append(e.b, 0xd3, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32),
			byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
}

// errMalformed is every reason a byte string is not the MessagePack a
// response must be; the decoder does not say more (neither does the Rust
// client).
var errMalformed = errors.New("malformed response")

// maxDepth bounds how deeply nested an unknown value may be before the
// reader gives up on skipping it.
const maxDepth = 8

// reader takes MessagePack values off a byte slice, checking every length
// against what is left.
type reader struct {
	b   []byte
	pos int
}

func (r *reader) left() int { return len(r.b) - r.pos }

func (r *reader) byte() (byte, error) {
	if r.pos >= len(r.b) {
		return 0, errMalformed
	}
	c := r.b[r.pos]
	r.pos++
	return c, nil
}

// be reads an n-byte big-endian number (n <= 8).
func (r *reader) be(n int) (uint64, error) {
	if r.left() < n {
		return 0, errMalformed
	}
	var v uint64
	for _, c := range r.b[r.pos : r.pos+n] {
		v = v<<8 | uint64(c)
	}
	r.pos += n
	return v, nil
}

func (r *reader) peek() (byte, error) {
	if r.pos >= len(r.b) {
		return 0, errMalformed
	}
	return r.b[r.pos], nil
}

// isNil takes a nil if one comes next.
func (r *reader) isNil() bool {
	if c, err := r.peek(); err == nil && c == 0xc0 {
		r.pos++
		return true
	}
	return false
}

// mapLen reads a map header. Every entry takes at least two bytes, so a
// count larger than what is left is refused before anything is allocated.
func (r *reader) mapLen() (int, error) {
	c, err := r.byte()
	if err != nil {
		return 0, err
	}
	var n uint64
	switch {
	case c&0xf0 == 0x80:
		n = uint64(c & 0x0f)
	case c == 0xde:
		n, err = r.be(2)
	case c == 0xdf:
		n, err = r.be(4)
	default:
		return 0, errMalformed
	}
	if err != nil || n > uint64(r.left()/2) {
		return 0, errMalformed
	}
	return int(n), nil
}

// str reads a MessagePack str (not bin) holding valid UTF-8.
func (r *reader) str() (string, error) {
	c, err := r.byte()
	if err != nil {
		return "", err
	}
	var n uint64
	switch {
	case c&0xe0 == 0xa0:
		n = uint64(c & 0x1f)
	case c == 0xd9:
		n, err = r.be(1)
	case c == 0xda:
		n, err = r.be(2)
	case c == 0xdb:
		n, err = r.be(4)
	default:
		return "", errMalformed
	}
	if err != nil || n > uint64(r.left()) {
		return "", errMalformed
	}
	s := r.b[r.pos : r.pos+int(n)]
	if !utf8.Valid(s) {
		return "", errMalformed
	}
	r.pos += int(n)
	return string(s), nil
}

// uint reads any MessagePack integer format whose value is 0 or more and
// at most max.
func (r *reader) uint(max uint64) (uint64, error) {
	c, err := r.byte()
	if err != nil {
		return 0, err
	}
	var v uint64
	switch {
	case c < 0x80:
		v = uint64(c)
	case c >= 0xcc && c <= 0xcf:
		v, err = r.be(1 << (c - 0xcc))
	case c >= 0xd0 && c <= 0xd3:
		n := 1 << (c - 0xd0)
		var u uint64
		u, err = r.be(n)
		// Sign-extend from n bytes; a negative value is no uint.
		shift := 64 - 8*uint(n)
		s := int64(u<<shift) >> shift
		if s < 0 {
			return 0, errMalformed
		}
		v = uint64(s)
	default:
		return 0, errMalformed
	}
	if err != nil || v > max {
		return 0, errMalformed
	}
	return v, nil
}

// skip steps over one value of any type, nested at most maxDepth deep.
func (r *reader) skip(depth int) error {
	if depth > maxDepth {
		return errMalformed
	}
	c, err := r.byte()
	if err != nil {
		return err
	}
	var n, items uint64
	switch {
	case c < 0x80 || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		return nil
	case c&0xe0 == 0xa0:
		n = uint64(c & 0x1f)
	case c&0xf0 == 0x90:
		items = uint64(c & 0x0f)
	case c&0xf0 == 0x80:
		items = 2 * uint64(c&0x0f)
	default:
		switch c {
		case 0xcc, 0xd0:
			n = 1
		case 0xcd, 0xd1:
			n = 2
		case 0xca, 0xce, 0xd2:
			n = 4
		case 0xcb, 0xcf, 0xd3:
			n = 8
		case 0xc4, 0xd9:
			n, err = r.be(1)
		case 0xc5, 0xda:
			n, err = r.be(2)
		case 0xc6, 0xdb:
			n, err = r.be(4)
		case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext: type byte + 1..16
			n = 1 + 1<<(c-0xd4)
		case 0xc7, 0xc8, 0xc9: // ext: length, type byte, data
			n, err = r.be(1 << (c - 0xc7))
			n++
		case 0xdc:
			items, err = r.be(2)
		case 0xdd:
			items, err = r.be(4)
		case 0xde:
			items, err = r.be(2)
			items *= 2
		case 0xdf:
			items, err = r.be(4)
			items *= 2
		default: // 0xc1: never used
			return errMalformed
		}
	}
	if err != nil || n > uint64(r.left()) || items > uint64(r.left()) {
		return errMalformed
	}
	r.pos += int(n)
	for i := uint64(0); i < items; i++ {
		if err := r.skip(depth + 1); err != nil {
			return err
		}
	}
	return nil
}
