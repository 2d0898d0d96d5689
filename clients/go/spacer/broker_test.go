package spacer

// End-to-end tests against the real broker (see harness_test.go): what a
// spacetest suite does, as root and as other uids, with an fd-leak check
// of client and broker after each.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var roomTypes = []struct {
	bit  Spaces
	name string
}{{Cgroup, "cgroup"}, {IPC, "ipc"}, {Mnt, "mnt"}, {Net, "net"}, {Time, "time"}, {UTS, "uts"}}

// leakCheck takes the client's and the broker's fd counts and checks at
// the test's end that both are back.
func leakCheck(t *testing.T, b *broker) {
	t.Helper()
	base := b.baseline(t)
	mine := fdLinks(t)
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		if now := fdLinks(t); len(now) != len(mine) {
			t.Errorf("this process holds %d fds, %d before the test:\n%v\nbefore:\n%v", len(now), len(mine), now, mine)
		}
		b.settle(t, base)
	})
}

func connect(t *testing.T, b *broker) *Client {
	t.Helper()
	c, err := Connect(context.Background(), b.socket)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRoomsOfEachType(t *testing.T) {
	b := needBroker(t)
	leakCheck(t, b)
	c := connect(t, b)
	defer c.Close()
	if c.PID() != b.cmd.Process.Pid {
		t.Errorf("PID() = %d, the broker is %d", c.PID(), b.cmd.Process.Pid)
	}
	all := Spaces(0)
	for _, rt := range roomTypes {
		all |= rt.bit
		r, err := c.Rooms(rt.bit)
		if err != nil {
			t.Fatalf("%s: %v", rt.name, err)
		}
		if r.Spaces() != rt.bit {
			t.Errorf("%s: got %v", rt.name, r.Spaces())
		}
		f := *r.slot(rt.bit)
		if typ, err := nsType(int(f.Fd())); err != nil || typ != rt.bit {
			t.Errorf("%s: NS_GET_NSTYPE says %v, %v", rt.name, typ, err)
		}
		if ino := inode(f); ino == threadNs(rt.name) || f.Name() != fmt.Sprintf("%s:[%d]", rt.name, ino) {
			t.Errorf("%s: %s is not new (own is %d)", rt.name, f.Name(), threadNs(rt.name))
		}
		r.Close()
	}
	r, err := c.Rooms(all)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Spaces() != all {
		t.Errorf("all six: got %v", r.Spaces())
	}
	// The record is written once the response is sent.
	end := time.Now().Add(5 * time.Second)
	for !sixAllowed(b) {
		if time.Now().After(end) {
			t.Fatalf("no audit record of the six rooms:\n%s", b.logText())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func sixAllowed(b *broker) bool {
	for _, d := range b.decisions() {
		if sp, ok := d["spaces"].([]interface{}); ok && len(sp) == 6 && d["decision"] == "allow" && d["request"] == "rooms" {
			return true
		}
	}
	return false
}

// fdLinks lists this process's open fds and what they are.
func fdLinks(t *testing.T) []string {
	t.Helper()
	d, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range d {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		out = append(out, e.Name()+" -> "+l)
	}
	return out
}

func TestEnterRoomsFromALockedThread(t *testing.T) {
	b := needBroker(t)
	leakCheck(t, b)
	c := connect(t, b)
	defer c.Close()
	r, err := c.RoomsWith(Cgroup|IPC|Mnt|Net|UTS|Time, RoomOptions{
		LoopbackUp: true, Hostname: "box", Domainname: "lab.example",
		BoottimeOffset: Offset(86400 * time.Second),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	join := map[Spaces]*os.File{Cgroup: r.Cgroup, IPC: r.IPC, Mnt: r.Mnt, Net: r.Net, UTS: r.UTS}
	err = inNamespaces(join, func() error {
		for _, rt := range roomTypes {
			if f := join[rt.bit]; f != nil && threadNs(rt.name) != inode(f) {
				return fmt.Errorf("the thread's %s namespace is %d, not the room's %d", rt.name, threadNs(rt.name), inode(f))
			}
		}
		if h := utsName("hostname"); h != "box" {
			return fmt.Errorf("hostname %q", h)
		}
		if d := utsName("domainname"); d != "lab.example" {
			return fmt.Errorf("domainname %q", d)
		}
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			return err
		}
		if lo.Flags&net.FlagUp == 0 {
			return fmt.Errorf("lo is down: %v", lo.Flags)
		}
		if ifs, _ := net.Interfaces(); len(ifs) != 1 {
			return fmt.Errorf("interfaces in the new net namespace: %v", ifs)
		}
		// Recursively private: no mount of the room propagates anywhere.
		mi, err := os.ReadFile("/proc/thread-self/mountinfo")
		if err != nil {
			return err
		}
		if strings.Contains(string(mi), "shared:") || strings.Contains(string(mi), "master:") {
			return fmt.Errorf("a mount of the mnt room propagates:\n%s", mi)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The kernel lets no thread of a multi-threaded process join a time
	// namespace: a child does.
	up, err := nsenter(map[string]*os.File{"time": r.Time}, "cat", "/proc/uptime")
	if err != nil {
		t.Fatal(err)
	}
	if s, err := strconv.ParseFloat(strings.Fields(up)[0], 64); err != nil || s < 86400 {
		t.Errorf("uptime in the time room: %q", up)
	}
	if utsName("hostname") == "box" {
		t.Error("the host's name changed")
	}
}

// utsName is a name of the calling thread's UTS namespace (procfs
// answers for the thread that reads).
func utsName(which string) string {
	b, _ := os.ReadFile("/proc/sys/kernel/" + which)
	return strings.TrimSpace(string(b))
}

func TestSubspaceAndARoomThroughIt(t *testing.T) {
	b := needBroker(t)
	leakCheck(t, b)
	c := connect(t, b)
	defer c.Close()
	inside, sub, err := c.Subspace(User | PID)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if typ, _ := nsType(int(sub.User.Fd())); typ != User {
		t.Errorf("user: %v", typ)
	}
	if typ, _ := nsType(int(sub.PID.Fd())); typ != PID {
		t.Errorf("pid: %v", typ)
	}
	if inside.PID() <= 0 || pidfdPid(int(sub.PIDFd.Fd())) != inside.PID() {
		t.Errorf("the subspace's service: PID() %d, pidfd %d", inside.PID(), pidfdPid(int(sub.PIDFd.Fd())))
	}
	r, err := inside.RoomsWith(Net|UTS, RoomOptions{Hostname: "inner", LoopbackUp: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if ownerOf(r.Net) != inode(sub.User) || ownerOf(r.UTS) != inode(sub.User) {
		t.Errorf("rooms through the subspace are owned by %d and %d, not its user namespace %d",
			ownerOf(r.Net), ownerOf(r.UTS), inode(sub.User))
	}
	// Root may enter them from a thread (it has every capability in the
	// subspace's user namespace, a child of its own).
	err = inNamespaces(map[Spaces]*os.File{Net: r.Net, UTS: r.UTS}, func() error {
		if h := utsName("hostname"); h != "inner" {
			return fmt.Errorf("hostname %q", h)
		}
		if threadNs("net") != inode(r.Net) {
			return errors.New("not in the net room")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The PID namespace is empty: the first child forked from a thread
	// that joined it is its PID 1.
	var out []byte
	err = inNamespaces(map[Spaces]*os.File{PID: sub.PID}, func() error {
		cmd := exec.Command("sh", "-c", `echo $$; readlink /proc/self/ns/pid`)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		var err error
		out, err = cmd.Output()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("1\npid:[%d]\n", inode(sub.PID)); string(out) != want {
		t.Errorf("in the PID namespace: %q, want %q", out, want)
	}
	// No thread of a Go program can join a user namespace: Execute says
	// so without trying.
	called := false
	err = Execute(func() error { called = true; return nil }, sub.User)
	if err == nil || called || !strings.Contains(err.Error(), "single-threaded") {
		t.Errorf("Execute in a user namespace: %v (fn called: %v)", err, called)
	}
	// A subspace in the subspace.
	inner, sub2, err := inside.Subspace(User)
	if err != nil {
		t.Fatal(err)
	}
	if ownerOf(sub2.User) != inode(sub.User) {
		t.Error("a nested user namespace is not the subspace's child")
	}
	inner.Close()
	sub2.Close()
	// Closing the subspace's client ends its service process.
	inside.Close()
	end := time.Now().Add(5 * time.Second)
	for pidfdPid(int(sub.PIDFd.Fd())) != -1 {
		if time.Now().After(end) {
			t.Fatal("the subspace's service outlived its connection")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := inside.Rooms(Net); !errors.Is(err, os.ErrClosed) {
		t.Errorf("a closed client: %v", err)
	}
}

func TestErrorsSayWhatFailed(t *testing.T) {
	b := needBroker(t)
	leakCheck(t, b)
	c := connect(t, b)
	defer c.Close()
	cases := []struct {
		name   string
		call   func() error
		kind   error
		reason string
	}{
		{"no space", func() error { _, err := c.Rooms(0); return err }, ErrInvalid, "no space requested"},
		{"user as a room", func() error { _, err := c.Rooms(User); return err }, ErrInvalid, "out of space"},
		{"net as a subspace", func() error { _, _, err := c.Subspace(Net); return err }, ErrInvalid, "out of space"},
		{"an option without its type", func() error { _, err := c.RoomsWith(Net, RoomOptions{Hostname: "box"}); return err },
			ErrInvalid, "option hostname needs a new uts namespace in the same request"},
		{"a bad host name", func() error { _, err := c.RoomsWith(UTS, RoomOptions{Hostname: "-bad"}); return err },
			ErrInvalid, "invalid hostname"},
		{"a map without user", func() error { _, _, err := c.SubspaceMapped(PID, MapCurrent); return err },
			ErrInvalid, "map is for a new user namespace: ask for user"},
		{"subordinate ids not granted", func() error { _, _, err := c.SubspaceMapped(User, MapAuto); return err },
			ErrDenied, "subordinate ids not allowed by rule 1"},
	}
	for _, k := range cases {
		err := k.call()
		var se *ServiceError
		if !errors.Is(err, k.kind) || !errors.As(err, &se) || !strings.HasPrefix(se.Reason, k.reason) {
			t.Errorf("%s: %v, want %v: %s", k.name, err, k.kind, k.reason)
		}
	}
	// The connection stays usable after every error.
	r, err := c.Rooms(UTS)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	// MapCurrent keeps this uid inside.
	inside, sub, err := c.SubspaceMapped(User, MapCurrent)
	if err != nil {
		t.Fatal(err)
	}
	inside.Close()
	sub.Close()
}

func TestContextEndClosesTheClient(t *testing.T) {
	b := needBroker(t)
	leakCheck(t, b)
	t.Setenv(FdEnv, "")
	t.Setenv(SocketEnv, b.socket)
	ctx, cancel := context.WithCancel(context.Background())
	c, err := New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	inside, sub, err := c.Subspace(User)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	cancel()
	end := time.Now().Add(5 * time.Second)
	for {
		// Until the watcher has closed them, requests are still served.
		r1, err1 := c.Rooms(UTS)
		r2, err2 := inside.Rooms(UTS)
		for _, r := range []*RoomsResponse{r1, r2} {
			if r != nil {
				r.Close()
			}
		}
		if errors.Is(err1, os.ErrClosed) && errors.Is(err2, os.ErrClosed) {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("after the context's end: %v, %v", err1, err2)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := c.Close(); err != nil {
		t.Errorf("a second Close: %v", err)
	}
}

func TestUnprivilegedTenant(t *testing.T) {
	b := needBroker(t)
	leakCheck(t, b)
	r := b.runHelper(t, "tenant", tenant, nil)
	if len(r.Checks) < 8 {
		t.Errorf("the tenant helper checked only %v", r.Checks)
	}
	for _, d := range b.decisions() {
		if d["uid"] == float64(tenant) && d["decision"] == "allow" {
			return
		}
	}
	t.Error("no allowed request of the tenant in the audit log")
}

func helperTenant(h *helper) {
	c := h.connect()
	defer c.Close()
	// A host room: handed out, but only the kernel's owner (root) may
	// enter it.
	r, err := c.RoomsWith(Net, RoomOptions{LoopbackUp: true})
	if err != nil {
		h.fail("rooms net: %v", err)
		return
	}
	typ, _ := nsType(int(r.Net.Fd()))
	h.check(typ == Net, "the net room is a net namespace")
	err = inNamespaces(map[Spaces]*os.File{Net: r.Net}, func() error { return nil })
	h.check(errors.Is(err, syscall.EPERM), "an unprivileged thread cannot enter a host-owned room (%v)", err)
	r.Close()
	_, err = c.Rooms(Mnt)
	h.check(errors.Is(err, ErrDenied) && strings.Contains(err.Error(), `mnt not allowed by rule 2 ("tenant")`),
		"mnt is denied: %v", err)
	_, err = c.RoomsWith(Time, RoomOptions{BoottimeOffset: Offset(time.Second)})
	h.check(errors.Is(err, ErrDenied), "time is denied: %v", err)

	// A subspace, and rooms through it, which the tenant may enter.
	inside, sub, err := c.Subspace(User | PID)
	if err != nil {
		h.fail("subspace: %v", err)
		return
	}
	defer sub.Close()
	defer inside.Close()
	rr, err := inside.RoomsWith(Net|UTS, RoomOptions{LoopbackUp: true, Hostname: "inner"})
	if err != nil {
		h.fail("rooms through the subspace: %v", err)
		return
	}
	defer rr.Close()
	h.check(ownerOf(rr.Net) == inode(sub.User), "the room through the subspace is owned by its user namespace")
	// A thread of a multi-threaded process cannot join a user namespace,
	// so a child joins them all, as root of the subspace.
	out, err := nsenter(map[string]*os.File{"user": sub.User, "pid": sub.PID, "net": rr.Net, "uts": rr.UTS},
		"sh", "-c", `echo $$ $(id -u) $(hostname) $(readlink /proc/self/ns/net) $(cat /sys/class/net/lo/operstate 2>/dev/null || ip -o link show lo | grep -c UP)`)
	if err != nil {
		h.fail("entering: %v", err)
		return
	}
	f := strings.Fields(out)
	want := []string{"1", "0", "inner", fmt.Sprintf("net:[%d]", inode(rr.Net))}
	h.check(len(f) >= 4 && strings.Join(f[:4], " ") == strings.Join(want, " "),
		"inside: pid 1, uid 0, hostname inner, the room's net namespace (%q)", out)
	// Without the user namespace a thread cannot enter even these.
	err = inNamespaces(map[Spaces]*os.File{UTS: rr.UTS}, func() error { return nil })
	h.check(errors.Is(err, syscall.EPERM), "a thread outside the user namespace cannot enter its rooms (%v)", err)
}

func TestUnprivilegedStranger(t *testing.T) {
	b := needBroker(t)
	leakCheck(t, b)
	b.runHelper(t, "stranger", stranger, nil)
}

func helperStranger(h *helper) {
	c := h.connect()
	defer c.Close()
	_, err := c.Rooms(Net)
	var se *ServiceError
	h.check(errors.As(err, &se) && se.Kind == KindDenied && se.Reason == "net not allowed by defaults",
		"net is denied by defaults: %v", err)
	_, _, err = c.Subspace(User)
	h.check(errors.Is(err, ErrDenied), "a subspace is denied: %v", err)
	_, err = c.Rooms(0)
	h.check(errors.Is(err, ErrInvalid), "an invalid request is invalid, not denied: %v", err)
}

func TestInheritedSubspaceConnection(t *testing.T) {
	b := needBroker(t)
	leakCheck(t, b)
	c := connect(t, b)
	defer c.Close()
	inside, sub, err := c.Subspace(User)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	defer inside.Close()
	conn, err := inside.File()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	b.runHelper(t, "inherited", 0, []string{FdEnv + "=3", "SPACER_GO_WANT_OWNER=" + strconv.FormatUint(inode(sub.User), 10)}, conn)
}

func helperInherited(h *helper) {
	c := h.connect() // SPACER_FD=3, the subspace's conn
	defer c.Close()
	r, err := c.Rooms(Net)
	if err != nil {
		h.fail("rooms through SPACER_FD: %v", err)
		return
	}
	defer r.Close()
	want, _ := strconv.ParseUint(os.Getenv("SPACER_GO_WANT_OWNER"), 10, 64)
	h.check(ownerOf(r.Net) == want, "a room through SPACER_FD is owned by the subspace's user namespace")
	// The inherited fd itself stays open: it is the process's.
	h.check(isOpen(3), "SPACER_FD stays open")
}

func TestARefusedConnectionReadsItsReason(t *testing.T) {
	b := needBroker(t)
	leakCheck(t, b)
	// Root's rule sets no max_connections: the broker's default per uid
	// (64) holds. The connection past it is answered unsolicited and
	// closed; the client reads that answer as its first request's, past
	// the EPIPE/ECONNRESET of a peer that has gone.
	var conns []*Client
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 70; i++ {
		conns = append(conns, connect(t, b))
	}
	_, err := conns[len(conns)-1].Rooms(UTS)
	var se *ServiceError
	if !errors.As(err, &se) || se.Kind != KindDenied || !strings.HasPrefix(se.Reason, "max_connections 64 reached") {
		t.Fatalf("the 70th connection: %v", err)
	}
	if _, err := conns[len(conns)-1].Rooms(UTS); !errors.Is(err, ErrClosed) && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Errorf("after the refusal: %v", err)
	}
}
