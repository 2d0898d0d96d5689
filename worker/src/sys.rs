//! The worker's system calls without a safe wrapper. Every `unsafe` block of
//! the worker lives here.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The outcome of [`clone_with_pidfd`].
pub enum Cloned {
    /// We are the new process.
    Child,
    /// We are the caller; the child is `pid`, referenced by `pidfd`.
    Parent {
        /// The child's pid.
        pid: libc::pid_t,
        /// A pidfd for the child (close-on-exec).
        pidfd: OwnedFd,
    },
}

/// The exact flags the worker clones with; the seccomp filter allows `clone`
/// with these flags and no others.
pub const CLONE_FLAGS: u64 = libc::CLONE_PIDFD as u64 | libc::SIGCHLD as u64;

/// `clone(CLONE_PIDFD | SIGCHLD)` without a new stack: a fork that also
/// returns a pidfd, so the child can be referenced without a pid race.
///
/// Only call this from a single-threaded process (the worker is): the child
/// continues on a copy of the caller's stack and memory, and must leave by
/// `std::process::exit`, never by returning into the caller's frames.
pub fn clone_with_pidfd() -> io::Result<Cloned> {
    let mut pidfd: libc::c_int = -1;
    // SAFETY: clone without CLONE_VM and with a null stack has fork semantics:
    // the child gets a private copy of the address space and continues here.
    // The worker is single-threaded, so no other thread holds a lock that the
    // child's copy could never release. The parent_tid pointer (where
    // CLONE_PIDFD stores the pidfd) points to a live local int; child_tid and
    // tls are unused (0).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            CLONE_FLAGS,
            0usize,
            &mut pidfd as *mut libc::c_int,
            0usize,
            0usize,
        )
    };
    match ret {
        r if r < 0 => Err(io::Error::last_os_error()),
        0 => Ok(Cloned::Child),
        pid => Ok(Cloned::Parent {
            pid: pid as libc::pid_t,
            // SAFETY: with CLONE_PIDFD the kernel stored a new pidfd, owned by
            // this process alone, in `pidfd` before returning the child's pid.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

/// Runs the body of a freshly cloned child and exits with its code. A
/// panic must not unwind into the parent's frames that the child's stack
/// copy still holds (their fds were closed and their numbers may be
/// reused): it ends the child with status 101 instead.
pub fn child_exit(body: impl FnOnce() -> i32) -> ! {
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
    std::process::exit(code)
}

/// Closes every fd from 3 up except those in `keep`, by `close_range(2)`.
///
/// Nothing in the process may still use an `OwnedFd` for a closed number
/// afterwards; callers use this at start-up and in a freshly cloned child,
/// before any such fd is touched again.
pub fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&k| k >= 3).collect();
    keep.sort_unstable();
    let mut first: RawFd = 3;
    for k in keep.into_iter().chain(std::iter::once(libc::c_int::MAX)) {
        if first < k {
            let last = if k == libc::c_int::MAX { k } else { k - 1 };
            // SAFETY: close_range takes integers only. The fds it closes are
            // the ones this process inherited or that belong to frames it
            // will never return to (see the function's contract), so no
            // live owner is left with a dangling number.
            let ret = unsafe { libc::close_range(first as libc::c_uint, last as libc::c_uint, 0) };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        first = k.saturating_add(1);
    }
    Ok(())
}

/// Takes ownership of an fd number passed on the command line by the
/// process that started us, if it is open. The caller checks right after
/// that it is the socket it should be.
pub fn adopt_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD reads the fd table entry and touches no memory of ours.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the fd is open, and the number came from our parent, which left
    // exactly this fd for us; nothing else in this fresh process refers to it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets `SIGCHLD` to `SIG_IGN`, so that exited children are reaped by the
/// kernel: no zombie can pile up in a worker that never calls `wait`.
pub fn autoreap_children() -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN installs no handler code, so none of sigaction's
    // async-signal-safety obligations arise.
    unsafe { sigaction(Signal::SIGCHLD, &ignore) }?;
    Ok(())
}

/// Points fds 0, 1 and 2 at `/dev/null`, whatever they were. A subspace
/// worker runs as the requester: it must not hold the broker's stderr (the
/// audit log) or anything else of the service's.
pub fn stdio_to_dev_null() -> io::Result<()> {
    for (fd, flags) in [
        (0, libc::O_RDONLY),
        (1, libc::O_WRONLY),
        (2, libc::O_WRONLY),
    ] {
        // SAFETY: fds 0-2 are the process's stdio, owned by no Rust value in
        // a subspace worker (std's stdio handles do not close them); closing
        // and reopening them is what this function is for.
        unsafe { libc::close(fd) };
        // SAFETY: the path is a NUL-terminated literal; open returns the
        // lowest free fd, which is `fd` since 0..fd are open and `fd` was
        // just closed.
        let got = unsafe { libc::open(c"/dev/null".as_ptr(), flags | libc::O_CLOEXEC) };
        if got != fd {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One call the seccomp filter must refuse, by name (see
/// `seccomp::SELFTEST_CALLS`), with arguments that do nothing harmful if it
/// were allowed: null pointers, invalid fds, a zero pid.
pub fn forbidden_call(name: &str) {
    let (nr, args): (libc::c_long, [libc::c_long; 5]) = match name {
        "ptrace" => (
            libc::SYS_ptrace,
            [libc::PTRACE_TRACEME as libc::c_long, 0, 0, 0, 0],
        ),
        "bpf" => (libc::SYS_bpf, [-1, 0, 0, 0, 0]),
        "init_module" => (libc::SYS_init_module, [0, 0, 0, 0, 0]),
        "kexec_load" => (libc::SYS_kexec_load, [0, 0, 0, 0, 0]),
        "open_by_handle_at" => (libc::SYS_open_by_handle_at, [-1, 0, 0, 0, 0]),
        "execve" => (libc::SYS_execve, [0, 0, 0, 0, 0]),
        "mount-bind" => (libc::SYS_mount, [0, 0, 0, libc::MS_BIND as libc::c_long, 0]),
        "mount-move" => (libc::SYS_mount, [0, 0, 0, libc::MS_MOVE as libc::c_long, 0]),
        "setns-any-type" => (libc::SYS_setns, [-1, 0, 0, 0, 0]),
        "unshare-files" => (
            libc::SYS_unshare,
            [libc::CLONE_FILES as libc::c_long, 0, 0, 0, 0],
        ),
        "clone-thread" => (
            libc::SYS_clone,
            [
                (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as libc::c_long,
                -1,
                0,
                0,
                0,
            ],
        ),
        "ioctl-tiocsti" => (
            libc::SYS_ioctl,
            [-1, libc::TIOCSTI as libc::c_long, 0, 0, 0],
        ),
        _ => return,
    };
    // SAFETY: every argument set above is inert: null pointers (which the
    // kernel rejects with EFAULT before touching memory), fd -1 (EBADF), or
    // flags without a pointer to follow. The one exception, clone with
    // CLONE_VM|CLONE_THREAD, passes an invalid stack (-1) and is refused by
    // the filter before the kernel would use it; if it were let through the
    // selftest would fail loudly, which is what it is for.
    unsafe {
        libc::syscall(nr, args[0], args[1], args[2], args[3], args[4]);
    }
}

/// Kills every descendant of this process and waits until none is left.
/// The caller is a child subreaper with `SIGCHLD` ignored: children are
/// reaped by the kernel, and a killed child's own children are reparented
/// here, to be killed in the next round. Each child is pinned with a pidfd
/// and checked to still be ours before it is signalled, so a recycled pid
/// is never hit.
pub fn kill_descendants() {
    let me = std::process::id();
    let list = format!("/proc/{me}/task/{me}/children");
    for _ in 0..200 {
        let pids: Vec<i32> = std::fs::read_to_string(&list)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let Ok(pidfd) = spacer_proto::fd::pidfd_open(pid) else {
                continue;
            };
            let ours = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.strip_prefix("PPid:")
                        .is_some_and(|v| v.trim() == me.to_string())
                });
            if ours {
                let _ = spacer_proto::fd::pidfd_send_signal(
                    std::os::fd::AsFd::as_fd(&pidfd),
                    libc::SIGKILL,
                );
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Brings up `lo` in the calling process's network namespace: reads its
/// flags (`SIOCGIFFLAGS`) and sets them again with `IFF_UP`
/// (`SIOCSIFFLAGS`). The ioctls go through one end of an `AF_UNIX`
/// `SOCK_SEQPACKET` pair made here, which belongs to this network
/// namespace; interface ioctls on any socket reach the device layer, so no
/// inet socket is needed. A connected pair is the only kind of socket the
/// seccomp filter lets the worker make: it cannot be aimed at any address
/// (a datagram socket could send to any socket file on the host). Needs
/// `CAP_NET_ADMIN` over the namespace.
pub fn loopback_up() -> io::Result<()> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let (sock, _other) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (d, s) in name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    let mut req = libc::ifreq {
        ifr_name: name,
        ifr_ifru: libc::__c_anonymous_ifr_ifru { ifru_flags: 0 },
    };
    // SAFETY: `req` is a live, properly laid out `struct ifreq` with a
    // NUL-terminated name; SIOCGIFFLAGS writes only its flags field, within
    // the struct. The socket fd is open for the duration.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the union was written by the kernel as flags just above.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads the struct.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `setdomainname(2)` for the calling process's UTS namespace (nix wraps
/// only `sethostname`). The caller has checked the name: at most 64 bytes.
pub fn set_domainname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, which stay
    // alive and unchanged for the call; the kernel copies at most `len`
    // bytes and needs no NUL terminator.
    let ret = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `FD_NSFS_ROOT`: the "mount fd" that makes `open_by_handle_at(2)` look a
/// handle up among namespaces only (Linux 6.18).
pub const FD_NSFS_ROOT: libc::c_int = -10003;

/// Whether the namespace with this file handle (see
/// `spacer_proto::fd::handle_bytes`) still exists: `open_by_handle_at` in
/// nsfs succeeds while it lives and fails with `ESTALE` once it is gone.
/// The fd it opens is closed at once. Other errors are returned.
pub fn namespace_alive(handle: &[u8; 16]) -> io::Result<bool> {
    #[repr(C)]
    struct Handle {
        head: libc::file_handle,
        bytes: [u8; 16],
    }
    let mut h = Handle {
        head: libc::file_handle {
            handle_bytes: 16,
            handle_type: spacer_proto::fd::FILEID_NSFS,
            f_handle: [],
        },
        bytes: *handle,
    };
    // SAFETY: `h` is a live, aligned `struct file_handle` followed by the 16
    // bytes its `handle_bytes` announces; the kernel only reads it. The
    // mount fd is the nsfs marker, not an fd of ours.
    let ret = unsafe {
        libc::open_by_handle_at(FD_NSFS_ROOT, &mut h.head, libc::O_RDONLY | libc::O_CLOEXEC)
    };
    if ret >= 0 {
        // SAFETY: a successful open_by_handle_at returned a new fd that
        // nothing else in this process knows; it is closed right here.
        drop(unsafe { OwnedFd::from_raw_fd(ret) });
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESTALE) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Sets `SECBIT_NO_SETUID_FIXUP`: changing the effective uid between 0 and
/// another uid then leaves the capability sets alone, so a room worker can
/// make rooms as the requester's effective uid (charged to the requester
/// by the kernel) and keep its capabilities. Needs `CAP_SETPCAP`.
pub fn keep_caps_across_uid_changes() -> io::Result<()> {
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    // SAFETY: PR_GET_SECUREBITS takes no pointer and returns the bits.
    let bits = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
    if bits < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = bits as libc::c_ulong | SECBIT_NO_SETUID_FIXUP;
    // SAFETY: PR_SET_SECUREBITS takes the bits by value, no pointer.
    if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, new, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
