package spacer

// Every system call of the package, on raw fds. Only the standard
// library's syscall package: NS_GET_NSTYPE and pidfd_send_signal have no
// wrapper there and go through syscall.Syscall.

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

const (
	// nsGetNstype is NS_GET_NSTYPE, _IO(0xb7, 0x3).
	nsGetNstype = 0xb703
	// sysPidfdSendSignal is pidfd_send_signal(2): 424 on every
	// architecture (system calls added since Linux 5.1 share numbers).
	sysPidfdSendSignal = 424
)

// nsType is the CLONE_NEW* bit of the namespace behind fd
// (NS_GET_NSTYPE), or an error when fd is no namespace.
func nsType(fd int) (Spaces, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), nsGetNstype, 0)
	if errno != 0 {
		return 0, errno
	}
	return Spaces(r), nil
}

// isPidfd: pidfd_send_signal(fd, 0) succeeds, or fails for lack of
// permission (EPERM), because the process has gone (ESRCH), or because it
// lives outside this process's PID namespace (EINVAL). Another file gives
// EBADF.
func isPidfd(fd int) bool {
	_, _, errno := syscall.Syscall6(sysPidfdSendSignal, uintptr(fd), 0, 0, 0, 0, 0)
	return errno == 0 || errno == syscall.EPERM || errno == syscall.ESRCH || errno == syscall.EINVAL
}

// isUnixSeqpacket: SO_TYPE is SOCK_SEQPACKET and the socket's own address
// is an AF_UNIX one.
func isUnixSeqpacket(fd int) bool {
	t, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE)
	if err != nil || t != syscall.SOCK_SEQPACKET {
		return false
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return false
	}
	_, ok := sa.(*syscall.SockaddrUnix)
	return ok
}

// dial connects a close-on-exec SOCK_SEQPACKET socket to path.
func dial(path string) (int, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		syscall.Close(fd)
		return -1, os.NewSyscallError("connect", err)
	}
	return fd, nil
}

// dupCloexec duplicates fd as a close-on-exec fd of 3 or more.
func dupCloexec(fd int) (int, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 3)
	if errno != 0 {
		return -1, os.NewSyscallError("fcntl", errno)
	}
	return int(r), nil
}

// send sends one datagram (no fds; MSG_NOSIGNAL: a closed peer is EPIPE,
// not a signal).
func send(fd int, b []byte) error {
	for {
		n, err := syscall.SendmsgN(fd, b, nil, nil, syscall.MSG_NOSIGNAL)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n != len(b) {
			return syscall.EMSGSIZE
		}
		return nil
	}
}

// recvResult is one datagram: its bytes and the fds that came with it,
// which the caller now owns.
type recvResult struct {
	n   int
	fds []int
}

// errTruncated: MSG_TRUNC or MSG_CTRUNC; the fds that came are closed.
type errTruncated struct{ data bool }

func (e errTruncated) Error() string {
	if e.data {
		return "response larger than " + strconv.Itoa(maxResponseBytes) + " bytes"
	}
	return "more than " + strconv.Itoa(maxResponseFds) + " fds in a response"
}

// recv receives one datagram into buf with MSG_CMSG_CLOEXEC and room for
// maxResponseFds fds. A truncated datagram or fd list closes every fd
// that arrived and is an error.
func recv(fd int, buf []byte) (recvResult, error) {
	oob := make([]byte, syscall.CmsgSpace(maxResponseFds*4))
	for {
		n, oobn, flags, _, err := syscall.Recvmsg(fd, buf, oob, syscall.MSG_CMSG_CLOEXEC)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return recvResult{}, err
		}
		fds := rights(oob[:oobn])
		if flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0 {
			closeAll(fds)
			return recvResult{}, errTruncated{data: flags&syscall.MSG_TRUNC != 0}
		}
		return recvResult{n, fds}, nil
	}
}

// rights collects the fds of every SCM_RIGHTS message in a control
// buffer. Unlike syscall.ParseSocketControlMessage it never fails: a
// header that does not fit ends the walk, and every fd read so far is
// returned, so that none is leaked.
func rights(b []byte) []int {
	var fds []int
	hdr := syscall.CmsgLen(0)
	for len(b) >= hdr {
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&b[0]))
		l := int(uint64(h.Len))
		if uint64(h.Len) < uint64(hdr) || uint64(h.Len) > uint64(len(b)) {
			break
		}
		if h.Level == syscall.SOL_SOCKET && h.Type == syscall.SCM_RIGHTS {
			data := b[hdr:l]
			for len(data) >= 4 {
				fds = append(fds, int(*(*int32)(unsafe.Pointer(&data[0]))))
				data = data[4:]
			}
		}
		next := syscall.CmsgSpace(l - hdr)
		if next > len(b) {
			break
		}
		b = b[next:]
	}
	return fds
}

func closeAll(fds []int) {
	for _, fd := range fds {
		syscall.Close(fd)
	}
}

// peerPid is the pid of the process on the other end (SO_PEERCRED).
func peerPid(fd int) int {
	c, err := syscall.GetsockoptUcred(fd, syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	if err != nil {
		return 0
	}
	return int(c.Pid)
}

// pidfdPid is the pid behind a pidfd as this process's PID namespace
// numbers it (the "Pid:" line of its fdinfo; 0 if it cannot see it, -1 if
// it has exited).
func pidfdPid(fd int) int {
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := cutPrefix(l, "Pid:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err == nil {
				return n
			}
		}
	}
	return 0
}

func cutPrefix(s, p string) (string, bool) {
	if strings.HasPrefix(s, p) {
		return s[len(p):], true
	}
	return s, false
}

// fileFor wraps a received fd, named as readlink shows a namespace
// ("net:[4026532301]"), or by what it is.
func fileFor(fd int, what string) *os.File {
	name := what
	var st syscall.Stat_t
	if what != "conn" && what != "pidfd" && syscall.Fstat(fd, &st) == nil {
		name = what + ":[" + strconv.FormatUint(st.Ino, 10) + "]"
	}
	return os.NewFile(uintptr(fd), name)
}
