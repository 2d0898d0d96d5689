//! The worker's system calls without a safe wrapper (every `unsafe` block
//! of the worker), and its one error type.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::{fmt, io};

use nix::errno::Errno;
use spacer_core::Channel;

/// A failed operation: what the worker was doing, and the errno if the
/// kernel gave one (shown as `EPERM (Operation not permitted)`).
#[derive(Debug)]
pub struct Error {
    what: String,
    errno: Option<Errno>,
}

impl Error {
    /// A failure that `what` describes completely.
    pub fn msg(what: impl Into<String>) -> Error {
        Error {
            what: what.into(),
            errno: None,
        }
    }

    /// A call that failed with `errno`.
    pub fn os(what: impl Into<String>, errno: Errno) -> Error {
        Error {
            what: what.into(),
            errno: Some(errno),
        }
    }

    /// The errno, if the kernel gave one.
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

/// The exact flags the worker clones with (its seccomp filters allow no
/// others): a fork that also gives a pidfd of the child.
pub const CLONE_FLAGS: u64 = libc::CLONE_PIDFD as u64 | libc::SIGCHLD as u64;

/// Forks a child that runs `body` on its end of a new channel and exits
/// with its code (101 if it panics: it must never unwind into the frames
/// it shares with the parent, whose fds it may have closed); returns this
/// process's end, the child's pid and a pidfd. `ctx`: what making the
/// channel and what forking are, for errors.
pub fn fork_with_channel(
    (pair, fork): (&str, &str),
    body: impl FnOnce(Channel) -> i32,
) -> Result<(Channel, libc::pid_t, OwnedFd), Error> {
    let (mine, theirs) = Channel::pair().ctx(pair)?;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: clone without CLONE_VM and with a null stack has fork
    // semantics; the worker is single-threaded, so the child's copy holds
    // no lock another thread would release. CLONE_PIDFD stores the pidfd
    // through the pointer, to a live local; child_tid and tls are unused.
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
        r if r < 0 => Err(io::Error::last_os_error()).ctx(fork),
        0 => {
            drop(mine);
            let run = std::panic::AssertUnwindSafe(|| body(theirs));
            std::process::exit(std::panic::catch_unwind(run).unwrap_or(101))
        }
        // SAFETY: the kernel stored a new pidfd, owned by this process
        // alone, before returning the child's pid.
        pid => Ok((mine, pid as libc::pid_t, unsafe {
            OwnedFd::from_raw_fd(pidfd)
        })),
    }
}

/// Closes every fd from 3 up except those in `keep`.
///
/// # Safety
///
/// No owner of a closed number may be used or dropped afterwards: call it
/// before anything owns an inherited fd, or in a freshly forked child that
/// never returns to its parent's frames.
pub unsafe fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&k| k >= 3).collect();
    keep.sort_unstable();
    let mut first: RawFd = 3;
    for k in keep.into_iter().chain([RawFd::MAX]) {
        if first < k {
            let last = if k == RawFd::MAX { k } else { k - 1 };
            // SAFETY: close_range takes integers; that no owner of a closed
            // number is used afterwards is the caller's contract.
            if unsafe { libc::close_range(first as u32, last as u32, 0) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        first = k.saturating_add(1);
    }
    Ok(())
}

/// Takes ownership of the fd our parent passed, if it is open.
///
/// # Safety
///
/// Nothing else in the process may own `fd`: call it once, at start-up.
pub unsafe fn adopt_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD reads the fd table entry and touches no memory of ours.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the fd is open and, by the caller's contract, unowned.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets `SIGCHLD` to `SIG_IGN`: exited children are reaped by the kernel.
pub fn autoreap_children() -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN installs no handler, so no async-signal-safety
    // obligation arises.
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
        // SAFETY: fds 0-2 are owned by no Rust value in a subspace worker
        // (std's stdio handles never close them).
        unsafe { libc::close(fd) };
        // SAFETY: a NUL-terminated literal path. open returns the lowest
        // free fd: `fd`, as 0..fd are open.
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

/// Brings up `lo` in the calling process's network namespace through one
/// end of an `AF_UNIX` pair (docs/ARCHITECTURE.md, "Room options").
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
    // SAFETY: `req` is a live `struct ifreq` with a NUL-terminated name;
    // SIOCGIFFLAGS writes only its flags, SIOCSIFFLAGS only reads it. The
    // socket is open for the duration.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote the union as flags just above.
    req.ifr_ifru.ifru_flags = unsafe { req.ifr_ifru.ifru_flags } | libc::IFF_UP as libc::c_short;
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `setdomainname(2)` (nix wraps only `sethostname`); the caller has
/// checked the name (at most 64 bytes).
pub fn set_domainname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`'s live bytes; the kernel
    // copies at most `len` of them and needs no NUL.
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
        handle_type: spacer_core::fd::FILEID_NSFS,
        f_handle: [],
    };
    let mut h = Handle {
        head,
        bytes: *handle,
    };
    // SAFETY: `h` is a live, aligned `struct file_handle` followed by the
    // 16 bytes it announces; the kernel only reads it. The mount fd is the
    // nsfs marker, not an fd of ours.
    let ret = unsafe {
        libc::open_by_handle_at(FD_NSFS_ROOT, &mut h.head, libc::O_RDONLY | libc::O_CLOEXEC)
    };
    if ret >= 0 {
        // SAFETY: a new fd nothing else knows, closed right here.
        drop(unsafe { OwnedFd::from_raw_fd(ret) });
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ESTALE) => Ok(false),
        _ => Err(err),
    }
}

/// Sets `SECBIT_NO_SETUID_FIXUP` (changing the effective uid between 0 and
/// another then leaves the capabilities alone). Needs `CAP_SETPCAP`.
pub fn keep_caps_across_uid_changes() -> io::Result<()> {
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    // SAFETY: PR_GET_SECUREBITS takes no pointer and returns the bits.
    let bits = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
    if bits < 0 {
        return Err(io::Error::last_os_error());
    }
    let bits = bits as libc::c_ulong | SECBIT_NO_SETUID_FIXUP;
    // SAFETY: PR_SET_SECUREBITS takes the bits by value, no pointer.
    if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
