//! The few system calls of this crate that have no safe wrapper in `nix`.
//! Every `unsafe` block of the crate lives here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// An ioctl request, `_IO(type, nr)`, through whose argument the kernel
/// reads and writes nothing: the only kind [`ioctl_ret`] is sound for, as
/// it passes no memory. Made only here, for the requests below
/// (`NS_GET_OWNER_UID` is `_IO` too but writes through its argument: it is
/// no `NoArgIoctl`).
#[derive(Clone, Copy)]
struct NoArgIoctl(libc::c_ulong);

impl NoArgIoctl {
    /// `_IO(ty, nr)`.
    const fn io(ty: u8, nr: u8) -> NoArgIoctl {
        NoArgIoctl(((ty as libc::c_ulong) << 8) | nr as libc::c_ulong)
    }
}

/// `NSIO` ioctls from `<linux/nsfs.h>`.
const NS_GET_USERNS: NoArgIoctl = NoArgIoctl::io(0xb7, 1);
const NS_GET_PARENT: NoArgIoctl = NoArgIoctl::io(0xb7, 2);
const NS_GET_NSTYPE: NoArgIoctl = NoArgIoctl::io(0xb7, 3);
/// `_IO(0xb7, 4)`, though it writes a `uid_t` through its argument.
const NS_GET_OWNER_UID: libc::c_ulong = 0xb704;

/// Takes ownership of fds the kernel just installed in this process for a
/// `recvmsg(2)` with `SCM_RIGHTS`.
pub(crate) fn adopt_received(raw: &[RawFd]) -> Vec<OwnedFd> {
    raw.iter()
        .filter(|&&fd| fd >= 0)
        .map(|&fd| {
            // SAFETY: `fd` was installed into our fd table by the kernel for this
            // very recvmsg call and nothing else refers to it; the returned
            // OwnedFd becomes its only owner and closes it exactly once.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect()
}

fn ioctl_ret(fd: BorrowedFd<'_>, request: NoArgIoctl) -> io::Result<libc::c_int> {
    // SAFETY: a NoArgIoctl's argument is not used by the kernel, so no
    // memory is passed; `fd` is a live borrowed fd.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request.0 as _, 0) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn ioctl_new_fd(fd: BorrowedFd<'_>, request: NoArgIoctl) -> io::Result<OwnedFd> {
    let new = ioctl_ret(fd, request)?;
    // SAFETY: on success these ioctls return a new close-on-exec fd that this
    // process now owns and nothing else refers to.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// `NS_GET_NSTYPE`: the `CLONE_NEW*` flag of the namespace behind `fd`.
pub(crate) fn ns_get_nstype(fd: BorrowedFd<'_>) -> io::Result<i64> {
    ioctl_ret(fd, NS_GET_NSTYPE).map(i64::from)
}

/// `NS_GET_USERNS`: the user namespace owning the namespace behind `fd`.
pub(crate) fn ns_get_userns(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    ioctl_new_fd(fd, NS_GET_USERNS)
}

/// `NS_GET_PARENT`: the parent of a user or PID namespace.
pub(crate) fn ns_get_parent(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    ioctl_new_fd(fd, NS_GET_PARENT)
}

/// `NS_GET_OWNER_UID`: the uid (in the caller's user namespace) that owns the
/// user namespace behind `fd`.
pub(crate) fn ns_get_owner_uid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut uid: libc::uid_t = 0;
    // SAFETY: NS_GET_OWNER_UID writes one uid_t through the pointer, which
    // points to a live, properly aligned local that outlives the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_OWNER_UID as _, &mut uid) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(uid)
    }
}

/// The namespace file handle of `fd` (`name_to_handle_at(fd, "",
/// AT_EMPTY_PATH)`): Linux 6.18 answers for nsfs with a 16-byte handle of
/// type `FILEID_NSFS` (241) whose first 8 bytes are the namespace's 64-bit
/// id (never reused while the machine runs), then its type and inode.
pub(crate) fn ns_file_handle(fd: BorrowedFd<'_>) -> io::Result<(i32, [u8; 16])> {
    #[repr(C)]
    struct Handle {
        head: libc::file_handle,
        bytes: [u8; 16],
    }
    let mut h = Handle {
        head: libc::file_handle {
            handle_bytes: 16,
            handle_type: 0,
            f_handle: [],
        },
        bytes: [0; 16],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: the path is an empty NUL-terminated literal; `h` is a live,
    // aligned `struct file_handle` followed by the 16 bytes its
    // `handle_bytes` announces, so the kernel writes within it (a larger
    // handle fails with EOVERFLOW instead); `mount_id` is a live local.
    let ret = unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut h.head,
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((h.head.handle_type, h.bytes))
}

/// `PIDFD_GET_<TYPE>_NAMESPACE` number `nr` on a pidfd (`<linux/pidfd.h>`,
/// Linux 6.11: `_IO(0xFF, nr)`).
pub(crate) fn pidfd_get_namespace(pidfd: BorrowedFd<'_>, nr: u8) -> io::Result<OwnedFd> {
    ioctl_new_fd(pidfd, NoArgIoctl::io(0xff, nr))
}

/// `pidfd_open(2)`.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a successful pidfd_open returns a new close-on-exec fd owned by
    // this process alone.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// `pidfd_send_signal(2)` with no siginfo.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: a null siginfo pointer is allowed and makes the kernel fill in
    // the defaults; the other arguments are integers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes `fd` appear as fd `target` (without close-on-exec) in the child
/// that `cmd` will start, and nowhere else. `cmd` owns `fd` from here (in
/// its pre-exec hook) and closes it when dropped.
pub(crate) fn pass_fd_as(cmd: &mut std::process::Command, fd: OwnedFd, target: RawFd) {
    use std::os::unix::process::CommandExt;
    let hook = move || {
        let fd = fd.as_raw_fd();
        if fd == target {
            // dup2 onto itself keeps FD_CLOEXEC; clear it instead.
            // SAFETY: fcntl on an fd number is async-signal-safe and touches
            // no memory of ours.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            // SAFETY: as above.
            if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0
            {
                return Err(io::Error::last_os_error());
            }
        } else {
            // SAFETY: dup2 is async-signal-safe; it replaces `target` in the
            // child's fd table only, and the new fd has FD_CLOEXEC clear.
            if unsafe { libc::dup2(fd, target) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child between fork and exec and
    // calls only async-signal-safe functions (fcntl, dup2) without
    // allocating or taking locks.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// `SO_PASSPIDFD` (Linux 6.5; not in glibc 2.36).
const SO_PASSPIDFD: libc::c_int = 76;

/// Turns `SO_PASSPIDFD` on: every datagram then carries a pidfd of its
/// sender (`SCM_PIDFD`).
pub(crate) fn set_pass_pidfd(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int_sockopt(fd, libc::SOL_SOCKET, SO_PASSPIDFD, 1)
}

/// `setsockopt(2)` of an `int` option, for the options nix does not name.
pub(crate) fn set_int_sockopt(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value points to a live local int and its size is
    // passed with it; `fd` is a live borrowed socket.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
