package spacer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// DefaultSocket is the broker's socket when neither SPACER_FD nor
// SPACER_SOCKET says otherwise.
const DefaultSocket = "/run/spacer/spacer.sock"

// The environment variables New reads.
const (
	// FdEnv names an inherited subspace connection (spacer run passes its
	// subspace's conn to its command this way).
	FdEnv = "SPACER_FD"
	// SocketEnv names the broker's socket.
	SocketEnv = "SPACER_SOCKET"
)

// Client is a connection to the spacer broker, or to a subspace through
// it. Requests on one Client take turns (one round trip at a time); a
// Client may be shared between goroutines.
type Client struct {
	mu   sync.Mutex // one request at a time
	conn *os.File   // nil once closed
	pid  int
	ctx  context.Context
	done chan struct{} // closed by Close
	once sync.Once
}

// New connects as the environment says: to the subspace connection
// $SPACER_FD names (inherited from spacer run: requests then go to that
// subspace), else to the broker at $SPACER_SOCKET, else at DefaultSocket.
// Empty variables count as unset. When ctx is done, the client is closed
// as by Close (a request in flight is answered first).
func New(ctx context.Context) (*Client, error) {
	if v := os.Getenv(FdEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 3 {
			return nil, fmt.Errorf("spacer: %s=%q is no fd number of 3 or more", FdEnv, v)
		}
		fd, err := dupCloexec(n)
		if err != nil {
			return nil, fmt.Errorf("spacer: %s=%d is no connection this process inherited: %w", FdEnv, n, err)
		}
		if !isUnixSeqpacket(fd) {
			syscall.Close(fd)
			return nil, fmt.Errorf("spacer: %s=%d is no AF_UNIX SOCK_SEQPACKET socket", FdEnv, n)
		}
		return newClient(ctx, os.NewFile(uintptr(fd), "spacer:"+FdEnv), peerPid(fd)), nil
	}
	path := os.Getenv(SocketEnv)
	if path == "" {
		path = DefaultSocket
	}
	return Connect(ctx, path)
}

// Connect connects to the broker at path. When ctx is done, the client is
// closed as by Close.
func Connect(ctx context.Context, path string) (*Client, error) {
	fd, err := dial(path)
	if err != nil {
		return nil, fmt.Errorf("spacer: cannot connect to %s: %w", path, err)
	}
	return newClient(ctx, os.NewFile(uintptr(fd), path), peerPid(fd)), nil
}

// FromFile makes a client of a connection someone handed you (another
// process's broker connection, or a subspace's conn); it takes f over. It
// acts as the process that opened the connection: the broker identifies
// peers when they connect.
func FromFile(ctx context.Context, f *os.File) (*Client, error) {
	sc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	ok, pid := false, 0
	if err := sc.Control(func(fd uintptr) {
		ok = isUnixSeqpacket(int(fd))
		pid = peerPid(int(fd))
	}); err != nil {
		return nil, err
	}
	if !ok {
		return nil, errors.New("spacer: not an AF_UNIX SOCK_SEQPACKET socket")
	}
	return newClient(ctx, f, pid), nil
}

func newClient(ctx context.Context, conn *os.File, pid int) *Client {
	if ctx == nil {
		ctx = context.Background()
	}
	c := &Client{conn: conn, pid: pid, ctx: ctx, done: make(chan struct{})}
	if ctx.Done() != nil {
		go func() {
			select {
			case <-ctx.Done():
				c.Close()
			case <-c.done:
			}
		}()
	}
	return c
}

// Close closes the connection. For a subspace's client this ends the
// subspace's service process (not the namespaces: they live as long as
// something holds them). Closing twice is no error.
func (c *Client) Close() error {
	var err error
	c.once.Do(func() {
		close(c.done)
		c.mu.Lock()
		defer c.mu.Unlock()
		err = c.conn.Close()
		c.conn = nil
	})
	return err
}

// PID is the pid of the process serving this client: the broker (as the
// kernel recorded the peer of the connection), or for a client that
// Subspace returned, the subspace's service process (as this process's
// PID namespace numbers it; 0 if it cannot see it).
func (c *Client) PID() int { return c.pid }

// File returns a close-on-exec duplicate of the connection, for handing
// to a child process (exec.Cmd.ExtraFiles, and SPACER_FD=3 for the first
// of them). The child's requests act as this client's.
func (c *Client) File() (*os.File, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil, os.ErrClosed
	}
	var nfd int
	var derr error
	if err := c.control(func(fd int) { nfd, derr = dupCloexec(fd) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	return os.NewFile(uintptr(nfd), "spacer:conn"), nil
}

func (c *Client) control(f func(fd int)) error {
	sc, err := c.conn.SyscallConn()
	if err != nil {
		return err
	}
	return sc.Control(func(fd uintptr) { f(int(fd)) })
}

// RoomsResponse holds the new namespaces of a Rooms request: one open
// file per requested type, nil for the others. The receiver owns them
// (Close closes them all).
type RoomsResponse struct {
	Cgroup, IPC, Mnt, Net, Time, UTS *os.File
}

func (r *RoomsResponse) slot(s Spaces) **os.File {
	switch s {
	case Cgroup:
		return &r.Cgroup
	case IPC:
		return &r.IPC
	case Mnt:
		return &r.Mnt
	case Net:
		return &r.Net
	case Time:
		return &r.Time
	case UTS:
		return &r.UTS
	}
	return nil
}

// Spaces is the set of types present.
func (r *RoomsResponse) Spaces() Spaces {
	var s Spaces
	for _, n := range spaceNames {
		if p := r.slot(n.bit); p != nil && *p != nil {
			s |= n.bit
		}
	}
	return s
}

// Close closes every namespace file of the response.
func (r *RoomsResponse) Close() {
	for _, f := range []*os.File{r.Cgroup, r.IPC, r.Mnt, r.Net, r.Time, r.UTS} {
		if f != nil {
			f.Close()
		}
	}
}

// Subspaces holds a subspace's new namespaces: nil for a type not asked
// for. The receiver owns them.
type Subspaces struct {
	// User is the new user namespace, owned by the caller's uid.
	User *os.File
	// PID is the new PID namespace. It is empty: the first process forked
	// after setns(PID, CLONE_NEWPID) is its PID 1.
	PID *os.File
}

// SubspaceResponse is what Subspace returns beside the subspace's client.
// The receiver owns every file (Close closes them all).
type SubspaceResponse struct {
	// PIDFd is a pidfd of the subspace's service process (it polls
	// readable when that process has ended).
	PIDFd *os.File
	Subspaces
}

// Close closes every file of the response.
func (s *SubspaceResponse) Close() {
	for _, f := range []*os.File{s.PIDFd, s.User, s.PID} {
		if f != nil {
			f.Close()
		}
	}
}

// Rooms asks for new namespaces, one per type in spaces, out of Cgroup,
// IPC, Mnt, Net, Time, UTS (syscall.CLONE_NEW* bits). All or nothing: the
// response holds exactly the types asked for.
func (c *Client) Rooms(spaces Spaces) (*RoomsResponse, error) {
	return c.RoomsWith(spaces, RoomOptions{})
}

// RoomsWith is Rooms with options: the service prepares each new
// namespace as o asks before it hands it out. A bad option is an
// ErrInvalid error and nothing is created; one the policy does not allow
// is ErrDenied.
func (c *Client) RoomsWith(spaces Spaces, o RoomOptions) (*RoomsResponse, error) {
	got, err := c.call(encodeRooms(spaces, o), "rooms")
	if err != nil {
		return nil, err
	}
	// Only names of room types were let through (assign).
	r := &RoomsResponse{}
	var have Spaces
	for name, fd := range got {
		s, _ := spaceByName(name)
		*r.slot(s) = fileFor(fd, name)
		have |= s
	}
	if have != spaces {
		r.Close()
		return nil, protocolError("asked for %v, got %v", spaces, have)
	}
	return r, nil
}

// Subspace asks for a new user and/or PID namespace (User, PID; at least
// one, nothing else) with a service of its own inside: the returned
// Client makes namespaces inside them. A new user namespace maps the
// caller's uid and gid to 0 and is owned by the caller's uid, so the
// caller can enter it, and everything made through the returned client,
// without privilege. Closing that Client ends the subspace's service.
func (c *Client) Subspace(spaces Spaces) (*Client, *SubspaceResponse, error) {
	return c.SubspaceMapped(spaces, MapRoot)
}

// SubspaceMapped is Subspace with a choice of id maps for the new user
// namespace (first-level subspaces only; MapAuto only where the policy
// grants subids).
func (c *Client) SubspaceMapped(spaces Spaces, m MapChoice) (*Client, *SubspaceResponse, error) {
	req, err := encodeSubspace(spaces, m)
	if err != nil {
		return nil, nil, err
	}
	got, err := c.call(req, "subspace")
	if err != nil {
		return nil, nil, err
	}
	var have Spaces
	if _, ok := got["user"]; ok {
		have |= User
	}
	if _, ok := got["pid"]; ok {
		have |= PID
	}
	if have != spaces {
		for _, fd := range got {
			syscall.Close(fd)
		}
		return nil, nil, protocolError("asked for %v, got %v", spaces, have)
	}
	resp := &SubspaceResponse{PIDFd: fileFor(got["pidfd"], "pidfd")}
	if fd, ok := got["user"]; ok {
		resp.User = fileFor(fd, "user")
	}
	if fd, ok := got["pid"]; ok {
		resp.PID = fileFor(fd, "pid")
	}
	inner := newClient(c.ctx, fileFor(got["conn"], "conn"), pidfdPid(got["pidfd"]))
	return inner, resp, nil
}

// call sends one request and receives its response: an error response
// becomes a *ServiceError; otherwise the fds of a response of kind op,
// each checked by kind and keyed by name.
func (c *Client) call(req []byte, op string) (map[string]int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil, os.ErrClosed
	}
	var got map[string]int
	var err error
	if cerr := c.control(func(fd int) { got, err = roundTrip(fd, req, op) }); cerr != nil {
		return nil, cerr
	}
	return got, err
}

func roundTrip(fd int, req []byte, op string) (map[string]int, error) {
	if err := send(fd, req); err != nil {
		// The service may have closed after leaving its reason (a refused
		// connection does): read it rather than report the broken pipe.
		if err != syscall.EPIPE && err != syscall.ECONNRESET {
			return nil, fmt.Errorf("spacer: sending the request: %w", os.NewSyscallError("sendmsg", err))
		}
	}
	buf := make([]byte, maxResponseBytes)
	got, err := recv(fd, buf)
	if err == syscall.ECONNRESET {
		// A service that closed with our request unread makes the kernel
		// report ECONNRESET once, ahead of any datagram it left.
		got, err = recv(fd, buf)
	}
	var trunc errTruncated
	switch {
	case errors.As(err, &trunc):
		return nil, protocolError("%v", err)
	case err != nil:
		return nil, fmt.Errorf("spacer: receiving the response: %w", os.NewSyscallError("recvmsg", err))
	case got.n == 0 && len(got.fds) == 0:
		return nil, ErrClosed
	}
	return decodeResponse(buf[:got.n], got.fds, op)
}

// decodeResponse believes nothing it is not shown: the datagram must be a
// response map of kind op (or "error"), its fds map must name every fd
// that came exactly once with an index in range, each name must be one
// the response kind has, and each fd must be what its name says. On any
// mismatch every fd is closed. The caller owns the returned fds.
func decodeResponse(b []byte, fds []int, op string) (map[string]int, error) {
	f, err := decodeFrame(b)
	if err != nil {
		closeAll(fds)
		return nil, &ProtocolError{Problem: err.Error()}
	}
	if f.op == "error" {
		if len(fds) != 0 || len(f.fds) != 0 {
			closeAll(fds)
			return nil, &ProtocolError{Problem: errFdMismatch.Error()}
		}
		switch k := Kind(f.kind); k {
		case KindDenied, KindFailed, KindInvalid, KindUnavailable:
			return nil, &ServiceError{Kind: k, Reason: f.reason}
		}
		return nil, protocolError("an error response of unknown kind %q", f.kind)
	}
	if f.op != op {
		closeAll(fds)
		if f.op == "rooms" || f.op == "subspace" {
			return nil, protocolError("a %s response to a %s request", f.op, op)
		}
		return nil, &ProtocolError{Problem: errMalformed.Error()}
	}
	got, err := assign(f.fds, fds, op)
	if err != nil {
		closeAll(fds)
		return nil, &ProtocolError{Problem: err.Error()}
	}
	return got, nil
}

// assign pairs every fd with the one name that claims its index, and
// checks the fd's kind against the name.
func assign(names []fdName, fds []int, op string) (map[string]int, error) {
	if len(names) != len(fds) {
		return nil, errFdMismatch
	}
	claimed := make([]bool, len(fds))
	out := make(map[string]int, len(fds))
	for _, n := range names {
		if int64(n.index) >= int64(len(fds)) || claimed[n.index] {
			return nil, errFdMismatch
		}
		claimed[n.index] = true
		fd := fds[n.index]
		if err := checkKind(op, n.name, fd); err != nil {
			return nil, err
		}
		out[n.name] = fd
	}
	if op == "subspace" {
		_, conn := out["conn"]
		_, pidfd := out["pidfd"]
		_, user := out["user"]
		_, pid := out["pid"]
		if !conn || !pidfd || !(user || pid) {
			return nil, errFdMismatch
		}
	}
	return out, nil
}

// checkKind: a namespace's NS_GET_NSTYPE is its name's bit; conn is an
// AF_UNIX SOCK_SEQPACKET socket; pidfd is a pidfd.
func checkKind(op, name string, fd int) error {
	var want Spaces
	switch {
	case op == "subspace" && name == "conn":
		if !isUnixSeqpacket(fd) {
			return errors.New("fd for conn is not a unix seqpacket socket")
		}
		return nil
	case op == "subspace" && name == "pidfd":
		if !isPidfd(fd) {
			return errors.New("fd for pidfd is not a pidfd")
		}
		return nil
	case op == "subspace" && (name == "user" || name == "pid"):
		want, _ = spaceByName(name)
	case op == "rooms":
		s, ok := spaceByName(name)
		if !ok || s == User || s == PID {
			return errMalformed
		}
		want = s
	default:
		return errMalformed
	}
	if t, err := nsType(fd); err != nil || t != want {
		return fmt.Errorf("fd for %s is not a %s namespace", name, name)
	}
	return nil
}
