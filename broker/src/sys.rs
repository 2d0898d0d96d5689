//! The broker's system calls and registrations without a safe wrapper:
//! `SO_PEERGROUPS`, taking ownership of the socket systemd passes as fd 3,
//! and registering fds with the event loop.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The supplementary groups of a unix socket's peer, as the kernel recorded
/// them at `connect(2)` (`SO_PEERGROUPS`).
pub fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer pointer and `len` describe `groups`' own live
        // allocation; the kernel writes at most `len` bytes and stores the
        // size it needs (or used) in `len`.
        let ret = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if ret == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        // ERANGE: the kernel told us how much it needs; the kernel caps a
        // process's groups at 65536, so this cannot grow without bound.
        if err.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65536 {
            groups.resize(n, 0);
            continue;
        }
        return Err(err);
    }
}

/// The socket systemd passed as fd 3 (`SD_LISTEN_FDS_START`), owned from
/// here and made close-on-exec, if fd 3 is open and `is_it` accepts it;
/// otherwise fd 3 is left alone.
///
/// # Safety
///
/// Call it once, at start-up, single-threaded, and only when
/// `LISTEN_PID`/`LISTEN_FDS` say fd 3 was passed to this process. If it was
/// not after all, fd 3 may belong to something this process opened (a
/// journal or notify socket): `is_it` must accept nothing but the kind of
/// socket passed (a listening `SOCK_SEQPACKET` socket file), which nothing
/// else here opens.
pub unsafe fn adopt_listen_fd(is_it: impl FnOnce(BorrowedFd<'_>) -> bool) -> Option<OwnedFd> {
    const FD: libc::c_int = 3;
    // SAFETY: F_GETFD reads the fd's flags only.
    if unsafe { libc::fcntl(FD, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: fd 3 is open (just checked) and stays open during the call:
    // the process is single-threaded and `is_it` only inspects it.
    if !is_it(unsafe { BorrowedFd::borrow_raw(FD) }) {
        return None;
    }
    // SAFETY: fcntl on an fd number sets its flags only.
    if unsafe { libc::fcntl(FD, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return None;
    }
    // SAFETY: fd 3 is the passed socket (the caller's contract and
    // `is_it`), which nothing else in the process owns.
    Some(unsafe { OwnedFd::from_raw_fd(FD) })
}

/// Registers an owned fd with the event loop.
pub fn register_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd keeps its fd open until it is dropped, which happens
    // only when the AsyncFd that now owns it is dropped, and its as_raw_fd()
    // always returns that same fd.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// Registers a channel with the event loop.
pub fn register_channel(
    chan: spacer_proto::Channel,
) -> io::Result<tokio::io::unix::AsyncFd<spacer_proto::Channel>> {
    // SAFETY: a Channel owns its socket as an OwnedFd that it neither closes
    // nor replaces while it lives, so the fd stays open and as_raw_fd()
    // returns the same number for the AsyncFd's whole life.
    unsafe { tokio::io::unix::AsyncFd::register(chan) }.map_err(io::Error::from)
}

/// Bytes this socket has sent that its peer has not read yet (`SIOCOUTQ`;
/// for a unix socket, memory of queued datagrams, freed as they are read).
pub fn unread_by_peer(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which points to a
    // live, aligned local that outlives the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}
