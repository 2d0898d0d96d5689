package spacer

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// docExample is one `<!-- check: ... -->` example of docs/PROTOCOL.md.
type docExample struct {
	check string
	bytes []byte
}

// docExamples reads every example of the protocol document, as the Rust
// test proto/tests/protocol_doc.rs does: the check line, then the next
// hex block.
func docExamples(t *testing.T) []docExample {
	t.Helper()
	text, err := os.ReadFile("../../../docs/PROTOCOL.md")
	if err != nil {
		t.Fatalf("the protocol document: %v", err)
	}
	var out []docExample
	lines := strings.Split(string(text), "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if !strings.HasPrefix(l, "<!-- check: ") || !strings.HasSuffix(l, " -->") {
			continue
		}
		check := strings.TrimSuffix(strings.TrimPrefix(l, "<!-- check: "), " -->")
		for i++; i < len(lines) && lines[i] != "```hex"; i++ {
		}
		var h []string
		for i++; i < len(lines) && lines[i] != "```"; i++ {
			h = append(h, strings.Fields(lines[i])...)
		}
		b, err := hex.DecodeString(strings.Join(h, ""))
		if err != nil {
			t.Fatalf("%s: %v", check, err)
		}
		out = append(out, docExample{check, b})
	}
	return out
}

// secs parses "-1.5" into a Duration.
func secs(t *testing.T, s string) time.Duration {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatal(err)
	}
	return time.Duration(f * float64(time.Second))
}

// testFds opens one fd of each kind a response can carry, keyed by name.
func testFds(t *testing.T) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, n := range []string{"cgroup", "ipc", "mnt", "net", "time", "uts", "user", "pid"} {
		fd, err := syscall.Open("/proc/self/ns/"+n, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		out[n] = fd
	}
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	out["conn"] = pair[0]
	out["other end"] = pair[1]
	pidfd, _, errno := syscall.Syscall(434 /* pidfd_open */, uintptr(os.Getpid()), 0, 0)
	if errno != 0 {
		t.Fatal(errno)
	}
	out["pidfd"] = int(pidfd)
	t.Cleanup(func() {
		for _, fd := range out {
			syscall.Close(fd)
		}
	})
	return out
}

// dup duplicates fds for one decode (which owns and may close them).
func dup(t *testing.T, fds ...int) []int {
	t.Helper()
	out := make([]int, len(fds))
	for i, fd := range fds {
		n, err := dupCloexec(fd)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = n
	}
	return out
}

func fdCount(t *testing.T) int {
	t.Helper()
	d, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(d)
}

func isOpen(fd int) bool {
	_, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0)
	return errno == 0
}

func TestDocumentExamples(t *testing.T) {
	ex := docExamples(t)
	if len(ex) != 7 {
		t.Fatalf("%d examples in docs/PROTOCOL.md, want 7", len(ex))
	}
	have := testFds(t)
	for _, e := range ex {
		words := strings.SplitN(e.check, " ", 3)
		switch {
		case words[0] == "request":
			rest := strings.Split(words[2], " ")
			spaces, err := strconv.ParseUint(strings.TrimPrefix(rest[0], "0x"), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			if words[1] == "rooms" {
				var o RoomOptions
				for _, w := range rest[1:] {
					k, v, _ := strings.Cut(w, "=")
					switch k {
					case "loopback_up":
						o.LoopbackUp = true
					case "hostname":
						o.Hostname = v
					case "domainname":
						o.Domainname = v
					case "monotonic_offset":
						o.MonotonicOffset = Offset(secs(t, v))
					case "boottime_offset":
						o.BoottimeOffset = Offset(secs(t, v))
					default:
						t.Fatalf("unknown option %q in %q", w, e.check)
					}
				}
				got = encodeRooms(Spaces(spaces), o)
			} else {
				got, err = encodeSubspace(Spaces(spaces), MapRoot)
				if err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(got, e.bytes) {
				t.Errorf("%s:\n got % x\nwant % x", e.check, got, e.bytes)
			}
		case words[0] == "response" && words[1] == "error":
			kind, reason, _ := strings.Cut(words[2], " ")
			reason, err := strconv.Unquote(reason)
			if err != nil {
				t.Fatal(err)
			}
			_, err = decodeResponse(e.bytes, nil, "rooms")
			var se *ServiceError
			if !errors.As(err, &se) || se.Kind != Kind(kind) || se.Reason != reason {
				t.Errorf("%s: got %v", e.check, err)
			}
		case words[0] == "response":
			op := words[1]
			var fds []int
			want := map[string]int{}
			for _, kv := range strings.Split(words[2], " ") {
				k, v, _ := strings.Cut(kv, "=")
				i, err := strconv.Atoi(v)
				if err != nil {
					t.Fatal(err)
				}
				want[k] = i
			}
			fds = make([]int, len(want))
			for k, i := range want {
				fds[i] = have[k]
			}
			fds = dup(t, fds...)
			got, err := decodeResponse(e.bytes, fds, op)
			if err != nil {
				t.Errorf("%s: %v", e.check, err)
				continue
			}
			for k, i := range want {
				if got[k] != fds[i] {
					t.Errorf("%s: %s is fd %d, want %d", e.check, k, got[k], fds[i])
				}
			}
			if len(got) != len(want) {
				t.Errorf("%s: got %v", e.check, got)
			}
			closeAll(fds)
		default:
			t.Fatalf("unknown example %q", e.check)
		}
	}
}

func TestEncodeRequests(t *testing.T) {
	long := strings.Repeat("a", 40) // str 8 from 32 bytes on
	cases := []struct {
		name string
		got  []byte
		want string
	}{
		{"every option", encodeRooms(UTS|Time, RoomOptions{
			Hostname: long, Domainname: "lab.example",
			MonotonicOffset: Offset(-2 * time.Second), BoottimeOffset: Offset(-300 * time.Millisecond),
		}), "87 a1 76 01 a2 6f 70 a5 72 6f 6f 6d 73 a6 73 70 61 63 65 73 ce 04 00 00 80" +
			" a8 686f73746e616d65 d9 28" + strings.Repeat(" 61", 40) +
			" aa 646f6d61696e6e616d65 ab 6c61622e6578616d706c65" +
			" b0 6d6f6e6f746f6e69635f6f6666736574 92 fe 00" +
			" af 626f6f7474696d655f6f6666736574 92 ff ce 29 b9 27 00"},
		{"mnt alone (uint 32 not needed)", encodeRooms(Mnt, RoomOptions{}),
			"83 a1 76 01 a2 6f 70 a5 72 6f 6f 6d 73 a6 73 70 61 63 65 73 ce 00 02 00 00"},
		{"time alone (uint 8)", encodeRooms(Time, RoomOptions{}),
			"83 a1 76 01 a2 6f 70 a5 72 6f 6f 6d 73 a6 73 70 61 63 65 73 cc 80"},
		{"a large offset (int 64)", encodeRooms(Time, RoomOptions{MonotonicOffset: Offset(-4611686018 * time.Second)}),
			"84 a1 76 01 a2 6f 70 a5 72 6f 6f 6d 73 a6 73 70 61 63 65 73 cc 80" +
				" b0 6d6f6e6f746f6e69635f6f6666736574 92 d3 ff ff ff fe ed 1f 41 7e 00"},
	}
	for _, m := range []struct {
		m    MapChoice
		tail string
	}{{MapCurrent, "a3 6d 61 70 a7 63 75 72 72 65 6e 74"}, {MapAuto, "a3 6d 61 70 a4 61 75 74 6f"}} {
		b, err := encodeSubspace(User, m.m)
		if err != nil {
			t.Fatal(err)
		}
		cases = append(cases, struct {
			name string
			got  []byte
			want string
		}{"map " + m.tail, b, "84 a1 76 01 a2 6f 70 a8 73 75 62 73 70 61 63 65 a6 73 70 61 63 65 73 ce 10 00 00 00 " + m.tail})
	}
	for _, c := range cases {
		want, err := hex.DecodeString(strings.ReplaceAll(c.want, " ", ""))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !bytes.Equal(c.got, want) {
			t.Errorf("%s:\n got % x\nwant % x", c.name, c.got, want)
		}
	}
	if _, err := encodeSubspace(User, MapChoice(7)); err == nil {
		t.Error("an unknown map choice encodes")
	}
}

// msg builds a response from hex words (spaces ignored).
func msg(t *testing.T, h string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(h, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Keys and values, in hex, for building responses.
const (
	v1       = "a1 76 01"
	opRooms  = "a2 6f 70 a5 72 6f 6f 6d 73"
	opSub    = "a2 6f 70 a8 73 75 62 73 70 61 63 65"
	opError  = "a2 6f 70 a5 65 72 72 6f 72"
	fdsKey   = "a3 66 64 73"
	netKey   = "a3 6e 65 74"
	utsKey   = "a3 75 74 73"
	kindKey  = "a4 6b 69 6e 64"
	denied   = "a6 64 65 6e 69 65 64"
	connKey  = "a4 63 6f 6e 6e"
	pidfdKey = "a5 70 69 64 66 64"
	userKey  = "a4 75 73 65 72"
)

func TestResponsesThatAreRefused(t *testing.T) {
	have := testFds(t)
	cases := []struct {
		name string
		msg  string
		fds  []string // names of testFds, in fd order
		op   string
		want string // part of the error
	}{
		{"not a map", "93 01 02 03", nil, "rooms", "malformed"},
		{"empty", "", nil, "rooms", "malformed"},
		{"no v", "81 " + opRooms, nil, "rooms", "malformed"},
		{"v 2", "82 a1 76 02 " + opRooms, nil, "rooms", "version 2"},
		{"v 2, the rest nonsense", "82 a1 76 02 a2 6f 70 c3", nil, "rooms", "version 2"},
		{"v negative", "82 a1 76 ff " + opRooms, nil, "rooms", "malformed"},
		{"v a string", "82 a1 76 a1 31 " + opRooms, nil, "rooms", "malformed"},
		{"v twice", "83 " + v1 + " " + v1 + " " + opRooms, nil, "rooms", "malformed"},
		{"no op", "81 " + v1, nil, "rooms", "malformed"},
		{"op twice", "83 " + v1 + " " + opRooms + " " + opRooms, nil, "rooms", "malformed"},
		{"op unknown", "82 " + v1 + " a2 6f 70 a4 70 69 6e 67", nil, "rooms", "malformed"},
		{"op a bin", "82 " + v1 + " a2 6f 70 c4 05 72 6f 6f 6d 73", nil, "rooms", "malformed"},
		{"a key not a string", "83 " + v1 + " " + opRooms + " 01 02", nil, "rooms", "malformed"},
		{"trailing bytes", "83 " + v1 + " " + opRooms + " " + fdsKey + " 80 c0", nil, "rooms", "malformed"},
		{"cut short", "83 " + v1 + " " + opRooms + " " + fdsKey, nil, "rooms", "malformed"},
		{"a map longer than the datagram", "df ff ff ff ff " + v1, nil, "rooms", "malformed"},
		{"a string longer than the datagram", "82 " + v1 + " a2 6f 70 db 7f ff ff ff 72", nil, "rooms", "malformed"},
		{"invalid utf-8", "82 " + v1 + " a2 6f 70 a2 ff fe", nil, "rooms", "malformed"},
		{"unknown key nested too deep", "83 " + v1 + " " + opRooms + " a1 78 " + strings.Repeat("91 ", 20) + "00",
			nil, "rooms", "malformed"},
		{"fewer fds than named", "83 " + v1 + " " + opRooms + " " + fdsKey + " 82 " + netKey + " 00 " + utsKey + " 01",
			[]string{"net"}, "rooms", "fds"},
		{"more fds than named", "83 " + v1 + " " + opRooms + " " + fdsKey + " 81 " + netKey + " 00",
			[]string{"net", "uts"}, "rooms", "fds"},
		{"an index out of range", "83 " + v1 + " " + opRooms + " " + fdsKey + " 81 " + netKey + " 01",
			[]string{"net"}, "rooms", "fds"},
		{"an index given twice", "83 " + v1 + " " + opRooms + " " + fdsKey + " 82 " + netKey + " 00 " + utsKey + " 00",
			[]string{"net", "uts"}, "rooms", "fds"},
		{"a name given twice", "83 " + v1 + " " + opRooms + " " + fdsKey + " 82 " + netKey + " 00 " + netKey + " 01",
			[]string{"net", "net"}, "rooms", "malformed"},
		{"an index too large", "83 " + v1 + " " + opRooms + " " + fdsKey + " 81 " + netKey + " cf 00 00 00 01 00 00 00 00",
			[]string{"net"}, "rooms", "malformed"},
		{"an index negative", "83 " + v1 + " " + opRooms + " " + fdsKey + " 81 " + netKey + " ff",
			[]string{"net"}, "rooms", "malformed"},
		{"net that is uts", "83 " + v1 + " " + opRooms + " " + fdsKey + " 81 " + netKey + " 00",
			[]string{"uts"}, "rooms", "not a net namespace"},
		{"net that is a socket", "83 " + v1 + " " + opRooms + " " + fdsKey + " 81 " + netKey + " 00",
			[]string{"conn"}, "rooms", "not a net namespace"},
		{"user in a rooms response", "83 " + v1 + " " + opRooms + " " + fdsKey + " 81 " + userKey + " 00",
			[]string{"user"}, "rooms", "malformed"},
		{"an unknown fd name", "83 " + v1 + " " + opRooms + " " + fdsKey + " 81 a3 66 6f 6f 00",
			[]string{"net"}, "rooms", "malformed"},
		{"rooms for subspace", "83 " + v1 + " " + opRooms + " " + fdsKey + " 81 " + netKey + " 00",
			[]string{"net"}, "subspace", "a rooms response to a subspace request"},
		{"subspace without pidfd", "83 " + v1 + " " + opSub + " " + fdsKey + " 82 " + connKey + " 00 " + userKey + " 01",
			[]string{"conn", "user"}, "subspace", "fds"},
		{"subspace without a namespace", "83 " + v1 + " " + opSub + " " + fdsKey + " 82 " + connKey + " 00 " + pidfdKey + " 01",
			[]string{"conn", "pidfd"}, "subspace", "fds"},
		{"conn that is a namespace", "83 " + v1 + " " + opSub + " " + fdsKey + " 83 " + connKey + " 00 " + pidfdKey + " 01 " + userKey + " 02",
			[]string{"net", "pidfd", "user"}, "subspace", "conn is not"},
		{"pidfd that is a socket", "83 " + v1 + " " + opSub + " " + fdsKey + " 83 " + connKey + " 00 " + pidfdKey + " 01 " + userKey + " 02",
			[]string{"conn", "conn", "user"}, "subspace", "pidfd is not"},
		{"user that is pid", "83 " + v1 + " " + opSub + " " + fdsKey + " 83 " + connKey + " 00 " + pidfdKey + " 01 " + userKey + " 02",
			[]string{"conn", "pidfd", "pid"}, "subspace", "not a user namespace"},
		{"an error with fds", "83 " + v1 + " " + opError + " " + kindKey + " " + denied, []string{"net"}, "rooms", "fds"},
		{"an error naming fds", "84 " + v1 + " " + opError + " " + kindKey + " " + denied + " " + fdsKey + " 81 " + netKey + " 00",
			nil, "rooms", "fds"},
		{"an error without kind", "82 " + v1 + " " + opError, nil, "rooms", "unknown kind"},
		{"an error of unknown kind", "83 " + v1 + " " + opError + " " + kindKey + " a3 62 61 64", nil, "rooms", "unknown kind"},
	}
	for _, c := range cases {
		fds := make([]int, len(c.fds))
		for i, n := range c.fds {
			fds[i] = have[n]
		}
		fds = dup(t, fds...)
		before := fdCount(t)
		_, err := decodeResponse(msg(t, c.msg), fds, c.op)
		if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want a protocol error with %q", c.name, err, c.want)
		}
		for _, fd := range fds {
			if isOpen(fd) {
				t.Errorf("%s: fd %d left open", c.name, fd)
				syscall.Close(fd)
			}
		}
		if after := fdCount(t); after != before-len(fds) {
			t.Errorf("%s: %d fds open before, %d after (%d received)", c.name, before, after, len(fds))
		}
	}
}

func TestResponsesThatAreTaken(t *testing.T) {
	have := testFds(t)
	cases := []struct {
		name string
		msg  string
		fds  []string
		op   string
	}{
		{"keys in another order, wider formats", "83 " + fdsKey + " de 00 02 " + utsKey + " d0 01 " + netKey + " cd 00 00 " +
			"d9 02 6f 70 a5 72 6f 6f 6d 73 a1 76 cf 00 00 00 00 00 00 00 01", []string{"net", "uts"}, "rooms"},
		{"an unknown key skipped", "84 " + v1 + " " + opRooms + " a5 6c 61 74 65 72 82 a1 61 92 c3 ca 00 00 00 00 a1 62 c7 02 01 aa bb " +
			fdsKey + " 81 " + netKey + " 00", []string{"net"}, "rooms"},
		{"subspace with user only", "83 " + v1 + " " + opSub + " " + fdsKey + " 83 " + userKey + " 02 " + connKey + " 00 " + pidfdKey + " 01",
			[]string{"conn", "pidfd", "user"}, "subspace"},
	}
	for _, c := range cases {
		fds := make([]int, len(c.fds))
		for i, n := range c.fds {
			fds[i] = have[n]
		}
		fds = dup(t, fds...)
		got, err := decodeResponse(msg(t, c.msg), fds, c.op)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		for i, n := range c.fds {
			if got[n] != fds[i] {
				t.Errorf("%s: %s is %d, want %d", c.name, n, got[n], fds[i])
			}
		}
		closeAll(fds)
	}
	_, err := decodeResponse(msg(t, "84 "+v1+" "+opError+" "+kindKey+" "+denied+" a6 72 65 61 73 6f 6e c0"), nil, "rooms")
	if !errors.Is(err, ErrDenied) || err.(*ServiceError).Reason != "" {
		t.Errorf("an error with a nil reason: %v", err)
	}
}

func TestRightsNeverLoseFds(t *testing.T) {
	have := testFds(t)
	fds := dup(t, have["net"], have["uts"])
	oob := syscall.UnixRights(fds...)
	if got := rights(oob); len(got) != 2 || got[0] != fds[0] || got[1] != fds[1] {
		t.Errorf("rights: %v, want %v", got, fds)
	}
	// A header claiming more than the buffer: nothing taken, no panic.
	bad := append([]byte(nil), oob...)
	bad[0] = 0xff
	if got := rights(bad); len(got) != 0 {
		t.Errorf("rights of a bad header: %v", got)
	}
	if got := rights(oob[:5]); len(got) != 0 {
		t.Errorf("rights of a short buffer: %v", got)
	}
	closeAll(fds)
}

func TestSpacesString(t *testing.T) {
	if s := (Net | UTS | 1).String(); s != "net|uts|0x1" {
		t.Errorf("%q", s)
	}
	if s := Spaces(0).String(); s != "none" {
		t.Errorf("%q", s)
	}
	if Net != syscall.CLONE_NEWNET || Mnt != syscall.CLONE_NEWNS || User != syscall.CLONE_NEWUSER ||
		PID != syscall.CLONE_NEWPID || UTS != syscall.CLONE_NEWUTS || IPC != syscall.CLONE_NEWIPC ||
		Cgroup != 0x02000000 || Time != 0x80 {
		t.Error("a Spaces constant is not its CLONE_NEW* bit")
	}
}

// FuzzDecode feeds any datagram, with a net and a uts fd, to the response
// decoder: it must not panic, and whatever it refuses, both fds are
// closed; whatever it takes, it returns them and nothing else.
func FuzzDecode(f *testing.F) {
	for _, h := range []string{
		"83 a1 76 01 a2 6f 70 a5 72 6f 6f 6d 73 a3 66 64 73 82 a3 6e 65 74 00 a3 75 74 73 01",
		"83 a1 76 01 a2 6f 70 a5 72 6f 6f 6d 73 a3 66 64 73 82 a3 6e 65 74 01 a3 75 74 73 00",
		"84 a1 76 01 a2 6f 70 a5 65 72 72 6f 72 a4 6b 69 6e 64 a6 64 65 6e 69 65 64 a6 72 65 61 73 6f 6e a0",
		"83 a1 76 01 a2 6f 70 a8 73 75 62 73 70 61 63 65 a3 66 64 73 82 a4 63 6f 6e 6e 00 a5 70 69 64 66 64 01",
		"df ff ff ff ff", "dc ff ff", "c1", "",
		"84 a1 76 01 a2 6f 70 a5 72 6f 6f 6d 73 a1 78 c9 00 00 00 02 01 aa bb a3 66 64 73 80",
	} {
		b, err := hex.DecodeString(strings.ReplaceAll(h, " ", ""))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	net, err := syscall.Open("/proc/self/ns/net", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		f.Fatal(err)
	}
	uts, err := syscall.Open("/proc/self/ns/uts", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { syscall.Close(net); syscall.Close(uts) })
	f.Fuzz(func(t *testing.T, b []byte) {
		fds := dup(t, net, uts)
		got, err := decodeResponse(b, fds, "rooms")
		if err != nil {
			var se *ServiceError
			if !errors.As(err, &se) && !errors.Is(err, ErrProtocol) {
				t.Fatalf("neither a service nor a protocol error: %v", err)
			}
			for _, fd := range fds {
				if isOpen(fd) {
					t.Fatalf("fd %d left open after %v", fd, err)
				}
			}
			return
		}
		if len(got) != 2 || got["net"] != fds[0] && got["net"] != fds[1] {
			t.Fatalf("took %v of %v", got, fds)
		}
		closeAll(fds)
	})
}
