//! The worker's system calls without a safe wrapper (every `unsafe` block
//! of the worker), and its one error type.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::{fmt, io};

use nix::errno::Errno;
use spacer_proto::Channel;

/// A failed operation: what the worker was doing, and the kernel's errno
/// if it gave one (shown as `EPERM (Operation not permitted)`).
#[derive(Debug)]
pub struct Error {
    what: String,
    errno: Option<Errno>,
}

impl Error {
    /// A failure that `what` describes completely.
    pub fn msg(what: impl Into<String>) -> Error {
        let what = what.into();
        Error { what, errno: None }
    }

    /// A call that failed with `errno`.
    pub fn os(what: impl Into<String>, errno: Errno) -> Error {
        let what = what.into();
        Error {
            what,
            errno: Some(errno),
        }
    }

    pub fn errno(&self) -> Option<Errno> {
        self.errno
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno {
            Some(e) => write!(f, "{}: {e:?} ({})", self.what, e.desc()),
            None => f.write_str(&self.what),
        }
    }
}

/// `.ctx("what was being done")` on a failed call's result.
pub trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, Error>;
}

impl<T> Ctx<T> for Result<T, Errno> {
    fn ctx(self, what: &str) -> Result<T, Error> {
        self.map_err(|e| Error::os(what, e))
    }
}

impl<T> Ctx<T> for io::Result<T> {
    fn ctx(self, what: &str) -> Result<T, Error> {
        self.map_err(|e| match e.raw_os_error() {
            Some(n) => Error::os(what, Errno::from_raw(n)),
            None => Error::msg(format!("{what}: {e}")),
        })
    }
}

/// The outcome of [`clone_with_pidfd`]: we are the new process, or its
/// parent, holding a pidfd of it (close-on-exec).
pub enum Cloned {
    Child,
    Parent { pid: libc::pid_t, pidfd: OwnedFd },
}

/// The exact flags the worker clones with (the seccomp filter allows no
/// others).
pub const CLONE_FLAGS: u64 = libc::CLONE_PIDFD as u64 | libc::SIGCHLD as u64;

/// A fork that also returns a pidfd, so the child can be referenced without
/// a pid race. Only from a single-threaded process (the worker is): the
/// child continues on a copy of the caller's stack and must leave by
/// [`child_exit`], never by returning into the caller's frames.
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

/// Forks a child that runs `body` on its end of a new channel and exits
/// with its code; returns this process's end, the child's pid and a pidfd.
/// `ctx`: what creating the channel and what forking are, for errors.
pub fn fork_with_channel(
    (pair, fork): (&str, &str),
    body: impl FnOnce(Channel) -> i32,
) -> Result<(Channel, libc::pid_t, OwnedFd), Error> {
    let (mine, theirs) = Channel::pair().ctx(pair)?;
    match clone_with_pidfd().ctx(fork)? {
        Cloned::Child => {
            drop(mine);
            child_exit(|| body(theirs))
        }
        Cloned::Parent { pid, pidfd } => Ok((mine, pid, pidfd)),
    }
}

/// Runs a freshly cloned child's body and exits with its code. A panic
/// must not unwind into the parent's frames the child's stack still holds
/// (their fds may be closed and reused): it exits with 101 instead.
pub fn child_exit(body: impl FnOnce() -> i32) -> ! {
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
    std::process::exit(code)
}

/// Closes every fd from 3 up except those in `keep`, by `close_range(2)`.
///
/// # Safety
///
/// No `OwnedFd` (or other owner) of a closed number may be used or dropped
/// afterwards: call it at start-up, before anything owns an inherited fd,
/// or in a freshly cloned child that never returns to its parent's frames.
pub unsafe fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&k| k >= 3).collect();
    keep.sort_unstable();
    keep.push(libc::c_int::MAX);
    let mut first: RawFd = 3;
    for k in keep {
        if first < k {
            let last = if k == libc::c_int::MAX { k } else { k - 1 };
            // SAFETY: close_range takes integers only; that no owner of a
            // closed number is used afterwards is the caller's contract.
            let ret = unsafe { libc::close_range(first as libc::c_uint, last as libc::c_uint, 0) };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        first = k.saturating_add(1);
    }
    Ok(())
}

/// Takes ownership of an fd number the process that started us passed on
/// the command line, if it is open (the caller checks what it is).
///
/// # Safety
///
/// Nothing else in the process may own `fd`: call it once, at start-up.
pub unsafe fn adopt_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD reads the fd table entry and touches no memory of ours.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the fd is open, and by the caller's contract nothing else
    // owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets `SIGCHLD` to `SIG_IGN`: exited children are reaped by the kernel.
pub fn autoreap_children() -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN installs no handler code, so none of sigaction's
    // async-signal-safety obligations arise.
    unsafe { sigaction(Signal::SIGCHLD, &ignore) }?;
    Ok(())
}

/// Points fds 0, 1 and 2 at `/dev/null`, whatever they were.
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
        // SAFETY: the path is a NUL-terminated literal that outlives the
        // call. (open returns the lowest free fd: `fd`, as 0..fd are open.)
        let got = unsafe { libc::open(c"/dev/null".as_ptr(), flags | libc::O_CLOEXEC) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        if got != fd {
            // SAFETY: `got` was opened just above; nothing else owns it.
            drop(unsafe { OwnedFd::from_raw_fd(got) });
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
    }
    Ok(())
}

/// Kills every descendant of this process (a child subreaper with
/// `SIGCHLD` ignored: a killed child's children come here for the next
/// round) and waits until none is left. Each child is pinned by a pidfd and
/// checked to still be ours before it is signalled.
pub fn kill_descendants() {
    let me = std::process::id();
    let list = format!("/proc/{me}/task/{me}/children");
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    for _ in 0..200 {
        let pids: Vec<i32> = read(&list)
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
            let status = read(&format!("/proc/{pid}/status"));
            let parent = |l: &str| {
                l.strip_prefix("PPid:")
                    .is_some_and(|v| v.trim() == me.to_string())
            };
            if status.lines().any(parent) {
                let pidfd = std::os::fd::AsFd::as_fd(&pidfd);
                let _ = spacer_proto::fd::pidfd_send_signal(pidfd, libc::SIGKILL);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Brings up `lo` in the calling process's network namespace
/// (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS` with `IFF_UP`), through one end of
/// an `AF_UNIX` pair made here (docs/ARCHITECTURE.md, "Room options").
pub fn loopback_up() -> io::Result<()> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (sock, _other) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let mut req = libc::ifreq {
        ifr_name: [0; libc::IFNAMSIZ],
        ifr_ifru: libc::__c_anonymous_ifr_ifru { ifru_flags: 0 },
    };
    req.ifr_name[..2].copy_from_slice(&[b'l' as libc::c_char, b'o' as libc::c_char]);
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

/// `setdomainname(2)` (nix wraps only `sethostname`); the caller has
/// checked the name: at most 64 bytes.
pub fn set_domainname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, which stay
    // alive and unchanged for the call; the kernel copies at most `len`
    // bytes and needs no NUL terminator.
    if unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The "mount fd" that makes `open_by_handle_at(2)` look a handle up among
/// namespaces only (Linux 6.18).
pub const FD_NSFS_ROOT: libc::c_int = -10003;

/// Whether the namespace with this nsfs file handle still exists (opened
/// and closed at once; `ESTALE`: gone). Other errors are returned.
pub fn namespace_alive(handle: &[u8; 16]) -> io::Result<bool> {
    #[repr(C)]
    struct Handle {
        head: libc::file_handle,
        bytes: [u8; 16],
    }
    let head = libc::file_handle {
        handle_bytes: 16,
        handle_type: spacer_proto::fd::FILEID_NSFS,
        f_handle: [],
    };
    let mut h = Handle {
        head,
        bytes: *handle,
    };
    let flags = libc::O_RDONLY | libc::O_CLOEXEC;
    // SAFETY: `h` is a live, aligned `struct file_handle` followed by the 16
    // bytes its `handle_bytes` announces; the kernel only reads it. The
    // mount fd is the nsfs marker, not an fd of ours.
    let ret = unsafe { libc::open_by_handle_at(FD_NSFS_ROOT, &mut h.head, flags) };
    if ret >= 0 {
        // SAFETY: a successful open_by_handle_at returned a new fd that
        // nothing else in this process knows; it is closed right here.
        drop(unsafe { OwnedFd::from_raw_fd(ret) });
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ESTALE) => Ok(false),
        _ => Err(err),
    }
}

/// Sets `SECBIT_NO_SETUID_FIXUP`: changing the effective uid between 0 and
/// another then leaves the capability sets alone. Needs `CAP_SETPCAP`.
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
