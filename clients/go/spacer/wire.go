package spacer

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Limits of docs/PROTOCOL.md ("Limits").
const (
	// Version is the protocol version this package speaks.
	Version = 1
	// maxResponseBytes is the receive buffer: the largest response.
	maxResponseBytes = 4096
	// maxResponseFds is the most fds a response carries.
	maxResponseFds = 6
)

// Spaces is a set of CLONE_NEW* bits, as syscall.CLONE_NEWNET (or
// golang.org/x/sys/unix's constants) write them.
type Spaces uint64

// The namespace types by their CLONE_NEW* bit.
const (
	Cgroup Spaces = 0x02000000
	IPC    Spaces = 0x08000000
	Mnt    Spaces = 0x00020000
	Net    Spaces = 0x40000000
	Time   Spaces = 0x00000080
	UTS    Spaces = 0x04000000
	User   Spaces = 0x10000000
	PID    Spaces = 0x20000000
)

// The names of the types on the wire, in the order of RoomsResponse.
var spaceNames = []struct {
	bit  Spaces
	name string
}{
	{Cgroup, "cgroup"}, {IPC, "ipc"}, {Mnt, "mnt"}, {Net, "net"},
	{Time, "time"}, {UTS, "uts"}, {User, "user"}, {PID, "pid"},
}

func spaceByName(name string) (Spaces, bool) {
	for _, s := range spaceNames {
		if s.name == name {
			return s.bit, true
		}
	}
	return 0, false
}

// String lists the types by name ("net|uts"), and unknown bits in hex.
func (s Spaces) String() string {
	out := ""
	rest := s
	for _, n := range spaceNames {
		if s&n.bit != 0 {
			if out != "" {
				out += "|"
			}
			out += n.name
			rest &^= n.bit
		}
	}
	if rest != 0 {
		if out != "" {
			out += "|"
		}
		out += fmt.Sprintf("%#x", uint64(rest))
	}
	if out == "" {
		return "none"
	}
	return out
}

// RoomOptions are first steps the service takes in new rooms before it
// hands them out (docs/PROTOCOL.md, "Requests"). Each needs its namespace
// type in the same request, and the broker's policy must allow it (by the
// names loopback, hostname, time-offsets).
type RoomOptions struct {
	// LoopbackUp brings lo up in the new network namespace.
	LoopbackUp bool
	// Hostname and Domainname set the new UTS namespace's names; "" leaves
	// a name as the requesting process has it.
	Hostname, Domainname string
	// MonotonicOffset and BoottimeOffset shift CLOCK_MONOTONIC and
	// CLOCK_BOOTTIME (and /proc/uptime) in the new time namespace; nil
	// leaves a clock unshifted. (Offset makes a pointer of a Duration.)
	MonotonicOffset, BoottimeOffset *time.Duration
}

// Offset returns a pointer to d, for RoomOptions' offsets.
func Offset(d time.Duration) *time.Duration { return &d }

// MapChoice is which ids a subspace's new user namespace maps.
type MapChoice int

const (
	// MapRoot maps the caller's uid and gid to 0 (the default).
	MapRoot MapChoice = iota
	// MapCurrent keeps the caller's uid and gid inside (as
	// unshare --map-current-user).
	MapCurrent
	// MapAuto maps the caller to 0 and, from 1 on, the subordinate ids of
	// /etc/subuid and /etc/subgid, where the policy grants subids (as
	// unshare --map-auto).
	MapAuto
)

func (m MapChoice) name() (string, error) {
	switch m {
	case MapRoot:
		return "root", nil
	case MapCurrent:
		return "current", nil
	case MapAuto:
		return "auto", nil
	}
	return "", fmt.Errorf("spacer: unknown MapChoice %d", int(m))
}

// encodeRooms writes a rooms request: the keys in the order the Rust
// client writes them, options left out when unused.
func encodeRooms(spaces Spaces, o RoomOptions) []byte {
	n := 3
	for _, set := range []bool{o.LoopbackUp, o.Hostname != "", o.Domainname != "",
		o.MonotonicOffset != nil, o.BoottimeOffset != nil} {
		if set {
			n++
		}
	}
	e := &encoder{}
	e.mapHeader(n)
	head(e, "rooms", spaces)
	if o.LoopbackUp {
		e.str("loopback_up")
		e.bool(true)
	}
	if o.Hostname != "" {
		e.str("hostname")
		e.str(o.Hostname)
	}
	if o.Domainname != "" {
		e.str("domainname")
		e.str(o.Domainname)
	}
	if o.MonotonicOffset != nil {
		e.str("monotonic_offset")
		offset(e, *o.MonotonicOffset)
	}
	if o.BoottimeOffset != nil {
		e.str("boottime_offset")
		offset(e, *o.BoottimeOffset)
	}
	return e.b
}

// encodeSubspace writes a subspace request; "map" only when it is not
// "root".
func encodeSubspace(spaces Spaces, m MapChoice) ([]byte, error) {
	name, err := m.name()
	if err != nil {
		return nil, err
	}
	e := &encoder{}
	if m == MapRoot {
		e.mapHeader(3)
	} else {
		e.mapHeader(4)
	}
	head(e, "subspace", spaces)
	if m != MapRoot {
		e.str("map")
		e.str(name)
	}
	return e.b, nil
}

func head(e *encoder, op string, spaces Spaces) {
	e.str("v")
	e.uint(Version)
	e.str("op")
	e.str(op)
	e.str("spaces")
	e.uint(uint64(spaces))
}

// offset writes [seconds, nanoseconds] with 0 <= nanoseconds < 1e9
// (-1.5 s is [-2, 500000000]).
func offset(e *encoder, d time.Duration) {
	secs := int64(d / time.Second)
	nanos := int64(d % time.Second)
	if nanos < 0 {
		secs--
		nanos += int64(time.Second)
	}
	e.arrayHeader(2)
	e.int(secs)
	e.uint(uint64(nanos))
}

// fdName is one entry of a response's fds map.
type fdName struct {
	name  string
	index uint32
}

// frame is a response map as read, before its fds are looked at.
type frame struct {
	op     string
	fds    []fdName // in wire order
	kind   string
	reason string
}

// versionError is a response of another protocol version.
type versionError uint64

func (v versionError) Error() string {
	return fmt.Sprintf("unsupported protocol version %d in response", uint64(v))
}

// decodeFrame reads a response datagram: one MessagePack map with string
// keys and nothing after it, "v" = 1 and "op" present, "fds" a map of
// distinct names to indices, "kind" and "reason" strings; nil is the same
// as a key left out; a key given twice, or of the wrong type, is refused;
// keys this package does not know are skipped. As the Rust client, it
// reads the version first, so that a response of another version is
// reported as such.
func decodeFrame(b []byte) (*frame, error) {
	v, err := peekVersion(b)
	if err != nil {
		return nil, err
	}
	if v != Version {
		return nil, versionError(v)
	}
	r := &reader{b: b}
	n, err := r.mapLen()
	if err != nil {
		return nil, err
	}
	f := &frame{}
	var seen struct{ v, op, fds, kind, reason bool }
	once := func(s *bool) error {
		if *s {
			return errMalformed
		}
		*s = true
		return nil
	}
	for i := 0; i < n; i++ {
		key, err := r.str()
		if err != nil {
			return nil, err
		}
		switch key {
		case "v":
			if err := once(&seen.v); err != nil {
				return nil, err
			}
			if _, err := r.uint(math.MaxUint64); err != nil {
				return nil, err
			}
		case "op":
			if err := once(&seen.op); err != nil {
				return nil, err
			}
			if f.op, err = r.str(); err != nil {
				return nil, err
			}
		case "fds":
			if err := once(&seen.fds); err != nil {
				return nil, err
			}
			if r.isNil() {
				continue
			}
			if f.fds, err = readFds(r); err != nil {
				return nil, err
			}
		case "kind", "reason":
			s := &seen.kind
			dst := &f.kind
			if key == "reason" {
				s, dst = &seen.reason, &f.reason
			}
			if err := once(s); err != nil {
				return nil, err
			}
			if r.isNil() {
				continue
			}
			if *dst, err = r.str(); err != nil {
				return nil, err
			}
		default:
			if err := r.skip(1); err != nil {
				return nil, err
			}
		}
	}
	if r.left() != 0 || !seen.op {
		return nil, errMalformed
	}
	return f, nil
}

// readFds reads the fds map: at most maxResponseFds distinct names, each
// an index that fits 32 bits (the range is checked against the fds that
// came).
func readFds(r *reader) ([]fdName, error) {
	n, err := r.mapLen()
	if err != nil {
		return nil, err
	}
	if n > maxResponseFds {
		return nil, errFdMismatch
	}
	out := make([]fdName, 0, n)
	for i := 0; i < n; i++ {
		name, err := r.str()
		if err != nil {
			return nil, err
		}
		idx, err := r.uint(math.MaxUint32)
		if err != nil {
			return nil, err
		}
		for _, o := range out {
			if o.name == name {
				return nil, errMalformed
			}
		}
		out = append(out, fdName{name, uint32(idx)})
	}
	return out, nil
}

// peekVersion finds "v" in the response map without judging the other
// values' types (only that they are MessagePack).
func peekVersion(b []byte) (uint64, error) {
	r := &reader{b: b}
	n, err := r.mapLen()
	if err != nil {
		return 0, err
	}
	for i := 0; i < n; i++ {
		key, err := r.str()
		if err != nil {
			return 0, err
		}
		if key == "v" {
			return r.uint(math.MaxUint64)
		}
		if err := r.skip(1); err != nil {
			return 0, err
		}
	}
	return 0, errMalformed
}

var errFdMismatch = errors.New("response names fds that did not arrive, or fds arrived that it does not name")
