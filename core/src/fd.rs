//! What kind of object an fd refers to: the checks every receiver of fds
//! makes before it believes a message.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};

use crate::ns::NsType;
use crate::sys;

/// The namespace type of `fd` (`NS_GET_NSTYPE`), or an error when `fd` is no
/// namespace fd (`ENOTTY`) or of a type this crate does not know.
pub fn namespace_type(fd: BorrowedFd<'_>) -> io::Result<NsType> {
    let flag = sys::ns_get_nstype(fd)?;
    NsType::from_clone_flag(flag).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The inode number of the namespace behind `fd`: the number that
/// `readlink /proc/PID/ns/TYPE` shows as `type:[inode]`.
pub fn namespace_inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let st = nix::sys::stat::fstat(fd)?;
    Ok(st.st_ino)
}

/// The user namespace that owns the namespace behind `fd` (`NS_GET_USERNS`).
pub fn owning_user_namespace(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    sys::ns_get_userns(fd)
}

/// The parent of the user or PID namespace behind `fd` (`NS_GET_PARENT`).
pub fn parent_namespace(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    sys::ns_get_parent(fd)
}

/// The uid that owns the user namespace behind `fd` (`NS_GET_OWNER_UID`),
/// as seen from the caller's user namespace.
pub fn user_namespace_owner(fd: BorrowedFd<'_>) -> io::Result<u32> {
    sys::ns_get_owner_uid(fd)
}

/// What identifies the namespace behind `fd` in its file handle (Linux
/// 6.18, type `FILEID_NSFS`): its 64-bit id, which the kernel never gives to
/// another namespace while the machine runs (unlike the inode number, reused
/// once a namespace is gone), and its inode. With its type, that is the
/// whole handle ([`handle_bytes`]).
pub fn namespace_handle(fd: BorrowedFd<'_>) -> io::Result<(u64, u32)> {
    let (kind, bytes) = sys::ns_file_handle(fd)?;
    if kind != FILEID_NSFS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[..8]);
    let mut ino = [0u8; 4];
    ino.copy_from_slice(&bytes[12..]);
    Ok((u64::from_ne_bytes(id), u32::from_ne_bytes(ino)))
}

/// The file handle type of namespaces (`FILEID_NSFS`).
pub const FILEID_NSFS: i32 = 241;

/// The 16 bytes of a namespace's file handle, from
/// [`namespace_handle`]'s parts and the namespace's type.
pub fn handle_bytes(t: NsType, (id, ino): (u64, u32)) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&id.to_ne_bytes());
    b[8..12].copy_from_slice(&(t.flag().bits() as u32).to_ne_bytes());
    b[12..].copy_from_slice(&ino.to_ne_bytes());
    b
}

/// Whether `fd` is a pidfd: `pidfd_send_signal(fd, 0)` succeeds, or fails
/// only for lack of permission, because the process has exited, or
/// because it lives outside the caller's PID namespace (`EINVAL`: a caller
/// inside a PID namespace holding a pidfd of a service process).
pub fn is_pidfd(fd: BorrowedFd<'_>) -> bool {
    match sys::pidfd_send_signal(fd, 0) {
        Ok(()) => true,
        Err(e) => matches!(
            e.raw_os_error(),
            Some(libc::EPERM) | Some(libc::ESRCH) | Some(libc::EINVAL)
        ),
    }
}

/// Whether `fd` is an `AF_UNIX` `SOCK_SEQPACKET` socket.
pub fn is_unix_seqpacket(fd: BorrowedFd<'_>) -> bool {
    matches!(getsockopt(&fd, sockopt::SockType), Ok(SockType::SeqPacket))
        && getsockname::<UnixAddr>(fd.as_raw_fd()).is_ok()
}

/// Opens a pidfd for `pid` (`pidfd_open(2)`).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    sys::pidfd_open(pid)
}

/// Sends `sig` to the process behind a pidfd (`pidfd_send_signal(2)`).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    sys::pidfd_send_signal(pidfd, sig)
}

/// Which of a process's namespaces [`pidfd_namespace`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The namespace the process is in.
    Current,
    /// For PID and time: the namespace its next child would be in.
    ForChildren,
}

/// A namespace of the process behind `pidfd`, by the pidfd ioctls
/// (`PIDFD_GET_<TYPE>_NAMESPACE`, Linux 6.11). Older kernels answer
/// `ENOTTY`; callers fall back to `/proc/PID/ns/`.
pub fn pidfd_namespace(pidfd: BorrowedFd<'_>, t: NsType, which: Which) -> io::Result<OwnedFd> {
    let for_children = which == Which::ForChildren;
    let nr = match t {
        NsType::Cgroup => 1,
        NsType::Ipc => 2,
        NsType::Mnt => 3,
        NsType::Net => 4,
        NsType::Pid if for_children => 6,
        NsType::Pid => 5,
        NsType::Time if for_children => 8,
        NsType::Time => 7,
        NsType::User => 9,
        NsType::Uts => 10,
    };
    sys::pidfd_get_namespace(pidfd, nr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn own_namespaces_are_recognised() {
        for t in NsType::ALL {
            let f = std::fs::File::open(format!("/proc/self/ns/{}", t.name())).unwrap();
            assert_eq!(namespace_type(f.as_fd()).unwrap(), t);
            let link = std::fs::read_link(format!("/proc/self/ns/{}", t.name())).unwrap();
            let ino = namespace_inode(f.as_fd()).unwrap();
            assert_eq!(link.to_str().unwrap(), format!("{}:[{}]", t.name(), ino));
        }
    }

    #[test]
    fn namespace_ids_differ_where_inodes_repeat() {
        let id = |f: &std::fs::File| namespace_handle(f.as_fd()).map(|(id, _)| id);
        let own = std::fs::File::open("/proc/self/ns/net").unwrap();
        let a = id(&own).unwrap();
        let again = std::fs::File::open("/proc/self/ns/net").unwrap();
        assert_eq!(id(&again).unwrap(), a);
        let uts = std::fs::File::open("/proc/self/ns/uts").unwrap();
        assert_ne!(id(&uts).unwrap(), a);
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(id(&f).is_err());
        // The parts make the handle back.
        let (kind, bytes) = sys::ns_file_handle(uts.as_fd()).unwrap();
        assert_eq!(kind, FILEID_NSFS);
        let parts = namespace_handle(uts.as_fd()).unwrap();
        assert_eq!(handle_bytes(NsType::Uts, parts), bytes);
        assert_eq!(u64::from(parts.1), namespace_inode(uts.as_fd()).unwrap());
    }

    #[test]
    fn other_fds_are_not_namespaces_or_pidfds() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(namespace_type(f.as_fd()).is_err());
        assert!(!is_pidfd(f.as_fd()));
        assert!(!is_unix_seqpacket(f.as_fd()));
    }

    #[test]
    fn pidfd_ioctls_match_proc() {
        let me = pidfd_open(std::process::id() as i32).unwrap();
        assert!(is_pidfd(me.as_fd()));
        for t in NsType::ALL {
            let Ok(ns) = pidfd_namespace(me.as_fd(), t, Which::Current) else {
                // Kernels before 6.11 have no such ioctl; nothing to compare.
                return;
            };
            let f = std::fs::File::open(format!("/proc/self/ns/{}", t.name())).unwrap();
            assert_eq!(namespace_type(ns.as_fd()).unwrap(), t);
            assert_eq!(
                namespace_inode(ns.as_fd()).unwrap(),
                namespace_inode(f.as_fd()).unwrap()
            );
        }
    }
}
