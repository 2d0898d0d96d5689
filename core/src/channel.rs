//! [`Channel`]: the one type that moves spacer messages and their fds over an
//! `AF_UNIX` `SOCK_SEQPACKET` socket, for broker, worker and client alike.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    connect, getsockopt, recvmsg, sendmsg, socket, socketpair, sockopt, AddressFamily,
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};

use crate::internal::{self, InternalError, Message, Trust};
use crate::sys;

/// Why a typed message could not be received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// No whole datagram.
    #[error(transparent)]
    Recv(#[from] RecvError),
    /// Not a message of the type, or not the fds it says.
    #[error(transparent)]
    Message(#[from] InternalError),
}

impl MessageError {
    /// Whether this is a `WouldBlock` from a non-blocking socket.
    pub fn is_would_block(&self) -> bool {
        matches!(self, MessageError::Recv(e) if e.is_would_block())
    }
}

/// Why a datagram could not be received whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The socket call failed (including `WouldBlock` on a non-blocking socket).
    #[error("cannot receive from socket")]
    Io(#[source] io::Error),
    /// The datagram was larger than the receive buffer (`MSG_TRUNC`).
    #[error("message larger than {max} bytes")]
    Truncated {
        /// The buffer size, i.e. the largest message accepted here.
        max: usize,
    },
    /// More fds were attached than the receiver takes (`MSG_CTRUNC`); every
    /// fd that did arrive has been closed.
    #[error("more than {max} fds attached to a message")]
    TooManyFds {
        /// The most fds accepted here.
        max: usize,
    },
    /// Fds were attached to a message that takes none; the kernel discarded
    /// them without installing them here.
    #[error("fds attached to a message that takes none")]
    UnexpectedFds,
}

impl RecvError {
    /// Whether this is a `WouldBlock` from a non-blocking socket.
    pub fn is_would_block(&self) -> bool {
        matches!(self, RecvError::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// One received datagram: how many bytes of the buffer it filled, and the fds
/// that came with it, now owned by the receiver.
#[derive(Debug)]
pub struct Received {
    /// Bytes written to the start of the buffer.
    pub len: usize,
    /// The fds of the datagram's `SCM_RIGHTS`, in order, close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// Who sent it, on a channel that asked ([`Channel::tell_senders`]).
    pub sender: Option<Sender>,
}

/// The process that sent one datagram, as the kernel attached it
/// (`SCM_CREDENTIALS` and `SCM_PIDFD`): on a socket that several processes
/// hold, the one that sent this message, not the one that connected.
#[derive(Debug)]
pub struct Sender {
    /// Its real uid, in this process's user namespace.
    pub uid: u32,
    /// Its pid, in this process's PID namespace (0 if it has none here).
    pub pid: i32,
    /// A pidfd of it (`None` on kernels before 6.5).
    pub pidfd: Option<OwnedFd>,
}

/// Who connected (or made the pair), as the kernel recorded it then
/// ([`Channel::peer_credentials`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Its effective uid then, in this process's user namespace.
    pub uid: u32,
    /// Its effective gid then.
    pub gid: u32,
    /// Its pid, in this process's PID namespace (0 if it has none here).
    pub pid: i32,
}

/// `SCM_PIDFD` (Linux 6.5; not in glibc 2.36).
const SCM_PIDFD: libc::c_int = 4;

/// A connected `AF_UNIX` `SOCK_SEQPACKET` socket: one message per datagram,
/// fds in one `SCM_RIGHTS` control message on the same datagram, received
/// close-on-exec. Every method takes `&self`; callers that need a request
/// and its response to stay together serialise them themselves.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    /// Whether every datagram carries its sender ([`Channel::tell_senders`]).
    senders: bool,
    /// Where fds this channel receives but does not hand out go
    /// ([`Channel::discard_fds`]); dropped here if `None`.
    discard: Option<Discard>,
}

/// Takes fds a receiver does not want and closes them where a blocking
/// `close(2)` stalls nobody (e.g. on a thread of their own): the last close
/// of a socket with `SO_LINGER` and unsent data, of a file on a stopped FUSE
/// server or of a large mount namespace can take seconds.
pub type Discard = fn(Vec<OwnedFd>);

/// The most fds one `SCM_RIGHTS` message can carry (`SCM_MAX_FD`).
pub const SCM_MAX_FD: usize = 253;

/// `SO_PASSRIGHTS` (Linux 6.16; not in glibc 2.36).
const SO_PASSRIGHTS: libc::c_int = 83;

impl Channel {
    fn new(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            senders: false,
            discard: None,
        }
    }

    /// Asks the kernel to refuse fds sent to this socket (`SO_PASSRIGHTS`
    /// off: a sender that attaches any gets `EPERM`, and nothing reaches
    /// this process). Set on a listening socket, it holds for every socket
    /// accepted from it. On a kernel without the option (before 6.16) it
    /// returns `Ok(false)` and the caller falls back to
    /// [`discard_fds`](Self::discard_fds).
    pub fn refuse_fds(&self) -> io::Result<bool> {
        match sys::set_int_sockopt(self.fd.as_fd(), libc::SOL_SOCKET, SO_PASSRIGHTS, 0) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOPROTOOPT | libc::EINVAL)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Every fd this channel receives but does not hand out — attached
    /// where none is wanted, beyond the count, or failing a message's
    /// check — goes to `discard` instead of being closed by the receiving
    /// thread. Where no fd is wanted (`max_fds == 0`), the channel then
    /// also receives with room for a full `SCM_RIGHTS` message: fds the
    /// kernel discards itself are closed by the receiving thread, fds it
    /// installs can go elsewhere.
    pub fn discard_fds(&mut self, discard: Discard) {
        self.discard = Some(discard);
    }

    /// Gets rid of received fds this channel does not hand out.
    fn dispose(&self, fds: Vec<OwnedFd>) {
        match self.discard {
            Some(d) if !fds.is_empty() => d(fds),
            _ => drop(fds),
        }
    }

    /// From now on every received datagram says which process sent it
    /// ([`Received::sender`]; `SO_PASSCRED`, and `SO_PASSPIDFD` where the
    /// kernel has it).
    pub fn tell_senders(&mut self) -> io::Result<()> {
        nix::sys::socket::setsockopt(&self.fd, sockopt::PassCred, &true)?;
        match sys::set_pass_pidfd(self.fd.as_fd()) {
            Err(e) if e.raw_os_error() != Some(libc::ENOPROTOOPT) => return Err(e),
            _ => {}
        }
        self.senders = true;
        Ok(())
    }

    /// A connected pair, both ends close-on-exec.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel::new(a), Channel::new(b)))
    }

    /// Connects to the socket file at `path`. Abstract addresses are not
    /// accepted: file permissions do not apply to them.
    pub fn connect(path: &Path) -> io::Result<Channel> {
        if path.as_os_str().as_bytes().first().is_none_or(|&b| b == 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "socket path is empty or abstract",
            ));
        }
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let addr = UnixAddr::new(path)?;
        connect(fd.as_raw_fd(), &addr)?;
        Ok(Channel::new(fd))
    }

    /// Wraps an fd that must be a connected `AF_UNIX` `SOCK_SEQPACKET` socket.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Channel> {
        if !crate::fd::is_unix_seqpacket(fd.as_fd()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "fd is not an AF_UNIX SOCK_SEQPACKET socket",
            ));
        }
        Ok(Channel::new(fd))
    }

    /// The socket, for callers that register it with an event loop.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Switches `O_NONBLOCK` on or off.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = OFlag::from_bits_truncate(fcntl(&self.fd, FcntlArg::F_GETFL)?);
        let flags = if on {
            flags | OFlag::O_NONBLOCK
        } else {
            flags - OFlag::O_NONBLOCK
        };
        fcntl(&self.fd, FcntlArg::F_SETFL(flags))?;
        Ok(())
    }

    /// The peer's credentials as the kernel recorded them at `connect(2)` or
    /// `socketpair(2)` time (`SO_PEERCRED`).
    pub fn peer_credentials(&self) -> io::Result<PeerCredentials> {
        let c = getsockopt(&self.fd, sockopt::PeerCredentials)?;
        Ok(PeerCredentials {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        })
    }

    /// Sends `data` as one datagram with `fds` attached. The fds stay open
    /// here; the kernel holds its own references while they are in flight.
    pub fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let cmsgs;
        let cmsg_slice: &[ControlMessage<'_>] = if raw.is_empty() {
            &[]
        } else {
            cmsgs = [ControlMessage::ScmRights(&raw)];
            &cmsgs
        };
        let iov = [IoSlice::new(data)];
        let sent = sendmsg::<()>(
            self.fd.as_raw_fd(),
            &iov,
            cmsg_slice,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        if sent != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "datagram sent in part",
            ));
        }
        Ok(())
    }

    /// Receives one datagram into `buf`, taking at most `max_fds` fds with it.
    ///
    /// `Ok(None)` is end of stream (the peer closed). A datagram larger than
    /// `buf` is an error, and so is any fd beyond `max_fds`; in every error
    /// case each fd that arrived has been closed. With `max_fds == 0` on a
    /// channel that does not [`tell_senders`](Self::tell_senders) no fd is
    /// ever installed in this process: the kernel discards them and the call
    /// reports [`RecvError::UnexpectedFds`]. On one that does, the control
    /// buffer has room for the sender's credentials and pidfd, and the
    /// kernel writes `SCM_RIGHTS` before `SCM_PIDFD`: up to two attached
    /// fds are installed (and closed here at once) and the pidfd left out.
    pub fn recv(&self, buf: &mut [u8], max_fds: usize) -> Result<Option<Received>, RecvError> {
        let mut space = if max_fds > 0 {
            cmsg_space_for(max_fds)
        } else if self.discard.is_some() {
            cmsg_space_for(SCM_MAX_FD)
        } else {
            0
        };
        if self.senders {
            space += nix::sys::socket::cmsg_space::<libc::ucred>() + cmsg_space_for(1);
        }
        let mut cmsg_buf = vec![0u8; space];
        let mut iov = [IoSliceMut::new(buf)];
        let msg = loop {
            let cmsg_opt = if space > 0 {
                Some(cmsg_buf.as_mut_slice())
            } else {
                None
            };
            match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                cmsg_opt,
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(RecvError::Io(e.into())),
                Ok(m) => break m,
            }
        };
        let len = msg.bytes;
        let flags = msg.flags;
        let mut fds = Vec::new();
        if flags.contains(MsgFlags::MSG_CTRUNC) {
            // More fds than fit (or than the fd limit allows): the kernel
            // installed what fit, and nix does not parse a truncated control
            // buffer, so read the headers here and close those fds.
            self.dispose(sys::adopt_received(&fds_in(&cmsg_buf)));
            return Err(if max_fds == 0 {
                RecvError::UnexpectedFds
            } else {
                RecvError::TooManyFds { max: max_fds }
            });
        }
        let (mut cred, mut pidfd) = (None, None);
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                match cmsg {
                    ControlMessageOwned::ScmRights(raw) => fds.extend(sys::adopt_received(&raw)),
                    ControlMessageOwned::ScmCredentials(c) => cred = Some(c),
                    ControlMessageOwned::Unknown(u)
                        if u.cmsg_header.cmsg_level == libc::SOL_SOCKET
                            && u.cmsg_header.cmsg_type == SCM_PIDFD =>
                    {
                        if let Ok(raw) = <[u8; 4]>::try_from(u.data_bytes.as_slice()) {
                            pidfd = sys::adopt_received(&[i32::from_ne_bytes(raw)]).pop();
                        }
                    }
                    _ => {}
                }
            }
        }
        let sender = cred.map(|c| Sender {
            uid: c.uid(),
            pid: c.pid(),
            pidfd,
        });
        if fds.len() > max_fds {
            self.dispose(fds);
            return Err(if max_fds == 0 {
                RecvError::UnexpectedFds
            } else {
                RecvError::TooManyFds { max: max_fds }
            });
        }
        if flags.contains(MsgFlags::MSG_TRUNC) {
            self.dispose(fds);
            return Err(RecvError::Truncated { max: buf.len() });
        }
        if len == 0 && fds.is_empty() && self.peer_closed() {
            return Ok(None);
        }
        Ok(Some(Received { len, fds, sender }))
    }

    /// Sends one internal message with the fds it says come with it.
    pub fn send_msg<T: Message>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.send(&internal::encode(msg), fds)
    }

    /// Receives one internal message of type `T` into `buf` (of
    /// [`internal::MAX_BYTES`], reused by the caller) with its fds, checked
    /// as `trust` says ([`Message::take`]); `Ok(None)` is end of stream. The
    /// bytes received are zeroed once decoded: nothing of a message stays
    /// in memory a later fork would copy.
    pub fn recv_msg<T: Message>(
        &self,
        buf: &mut [u8],
        trust: Trust,
    ) -> Result<Option<(T, Vec<OwnedFd>)>, MessageError> {
        match self.recv(buf, T::MAX_FDS) {
            Ok(Some(got)) => {
                let out = T::check(&buf[..got.len], &got.fds, trust);
                buf[..got.len].fill(0);
                match out {
                    Ok(msg) => Ok(Some((msg, got.fds))),
                    Err(e) => {
                        self.dispose(got.fds);
                        Err(e.into())
                    }
                }
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the peer has closed its end (`POLLHUP` right now: a connected
    /// unix socket reports it once the other end is gone).
    /// A zero-length read on `SOCK_SEQPACKET` is either an empty datagram or
    /// end of stream; this tells them apart.
    pub fn peer_closed(&self) -> bool {
        let mut pfd = [PollFd::new(self.fd.as_fd(), PollFlags::empty())];
        match nix::poll::poll(&mut pfd, PollTimeout::ZERO) {
            Ok(_) => pfd[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLHUP)),
            Err(_) => true,
        }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<Channel> for OwnedFd {
    fn from(c: Channel) -> OwnedFd {
        c.fd
    }
}

/// The fds in every `SCM_RIGHTS` and `SCM_PIDFD` header of a control buffer
/// the kernel filled, read by hand (used when it was truncated: nix parses
/// no truncated buffer, and every fd installed must still be closed). The buffer was zeroed
/// before the call, so a zero length ends the headers; lengths are clamped to
/// the buffer. The kernel writes its own layout: `cmsg_len` is a `size_t`.
fn fds_in(control: &[u8]) -> Vec<RawFd> {
    let word = std::mem::size_of::<usize>();
    let header = std::mem::size_of::<libc::cmsghdr>();
    let int = |at: usize| i32::from_ne_bytes(control[at..at + 4].try_into().expect("4 bytes"));
    let mut fds = Vec::new();
    let mut at = 0;
    while at + header <= control.len() {
        let len = usize::from_ne_bytes(control[at..at + word].try_into().expect("a word"));
        if len < header {
            break;
        }
        let (level, kind) = (int(at + word), int(at + word + 4));
        let end = at.saturating_add(len).min(control.len());
        if level == libc::SOL_SOCKET && (kind == libc::SCM_RIGHTS || kind == SCM_PIDFD) {
            fds.extend(
                control[at + header..end]
                    .chunks_exact(4)
                    .map(|c| i32::from_ne_bytes(c.try_into().expect("4 bytes"))),
            );
        }
        match len.checked_next_multiple_of(word) {
            Some(step) => at = at.saturating_add(step),
            None => break,
        }
    }
    fds
}

/// `CMSG_SPACE` for `n` fds: the aligned header plus the aligned fd array.
/// Alignment may leave room for one fd more than `n`; `recv` checks the count.
fn cmsg_space_for(n: usize) -> usize {
    let align = std::mem::size_of::<usize>();
    let data = n * std::mem::size_of::<RawFd>();
    nix::sys::socket::cmsg_space::<()>() + data.div_ceil(align) * align
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str) -> OwnedFd {
        std::fs::File::open(format!("/proc/self/ns/{name}"))
            .unwrap()
            .into()
    }

    #[test]
    fn message_and_fds_arrive_together_close_on_exec() {
        let (a, b) = Channel::pair().unwrap();
        let net = ns("net");
        a.send(b"hello", &[net.as_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let got = b.recv(&mut buf, 4).unwrap().unwrap();
        assert_eq!(&buf[..got.len], b"hello");
        assert_eq!(got.fds.len(), 1);
        let flags = nix::fcntl::fcntl(&got.fds[0], nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(
            nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC)
        );
        assert_eq!(
            crate::fd::namespace_inode(got.fds[0].as_fd()).unwrap(),
            crate::fd::namespace_inode(net.as_fd()).unwrap()
        );
    }

    #[test]
    fn oversized_datagram_is_truncation_error() {
        let (a, b) = Channel::pair().unwrap();
        a.send(&[7u8; 100], &[]).unwrap();
        let mut buf = [0u8; 10];
        assert!(matches!(
            b.recv(&mut buf, 0),
            Err(RecvError::Truncated { max: 10 })
        ));
    }

    /// Open fds of this process on `pipe` (either end; a pipe of one test,
    /// so tests running beside it do not count).
    fn copies_of(pipe: &std::io::PipeReader) -> usize {
        let me = std::fs::read_link(format!("/proc/self/fd/{}", pipe.as_raw_fd())).unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|l| *l == me)
            .count()
    }

    #[test]
    fn rights_are_read_from_a_control_buffer_by_hand() {
        let word = std::mem::size_of::<usize>();
        let header = std::mem::size_of::<libc::cmsghdr>();
        let mut buf = vec![0u8; 64];
        let mut put = |at: usize, level: i32, kind: i32, fds: &[i32]| {
            buf[at..at + word].copy_from_slice(&(header + 4 * fds.len()).to_ne_bytes());
            buf[at + word..at + word + 4].copy_from_slice(&level.to_ne_bytes());
            buf[at + word + 4..at + word + 8].copy_from_slice(&kind.to_ne_bytes());
            for (i, fd) in fds.iter().enumerate() {
                buf[at + header + 4 * i..at + header + 4 * i + 4]
                    .copy_from_slice(&fd.to_ne_bytes());
            }
        };
        put(0, libc::SOL_SOCKET, libc::SCM_RIGHTS, &[7, 8, 9]);
        let second = (header + 12).div_ceil(word) * word;
        put(second, libc::SOL_SOCKET, libc::SCM_RIGHTS, &[10]);
        assert_eq!(fds_in(&buf), vec![7, 8, 9, 10]);
        // A length past the end is clamped; other kinds are skipped.
        assert_eq!(fds_in(&buf[..header + 8]), vec![7, 8]);
        let mut other = buf.clone();
        other[word..word + 4].copy_from_slice(&(libc::SOL_IP).to_ne_bytes());
        assert_eq!(fds_in(&other), vec![10]);
        assert!(fds_in(&[0u8; 64]).is_empty());
        // Any bytes: no panic.
        let _ = fds_in(&[0xffu8; 64]);
        let mut huge = buf.clone();
        huge[..word].copy_from_slice(&usize::MAX.to_ne_bytes());
        // A length past the end of the buffer reads up to the end, no further.
        assert_eq!(fds_in(&huge).len(), (64 - header) / 4);
    }

    #[test]
    fn fds_where_none_are_taken_are_refused_and_closed() {
        let (a, b) = Channel::pair().unwrap();
        let (pipe, _w) = std::io::pipe().unwrap();
        let before = copies_of(&pipe);
        a.send(b"x", &[pipe.as_fd(), pipe.as_fd()]).unwrap();
        let mut buf = [0u8; 10];
        assert!(matches!(b.recv(&mut buf, 0), Err(RecvError::UnexpectedFds)));
        assert_eq!(copies_of(&pipe), before, "the received copies are closed");
    }

    #[test]
    fn too_many_fds_are_refused_and_every_one_that_arrived_closed() {
        let (a, b) = Channel::pair().unwrap();
        let (pipe, _w) = std::io::pipe().unwrap();
        let before = copies_of(&pipe);
        let borrowed: Vec<BorrowedFd<'_>> = (0..10).map(|_| pipe.as_fd()).collect();
        a.send(b"x", &borrowed).unwrap();
        let mut buf = [0u8; 10];
        assert!(matches!(
            b.recv(&mut buf, 3),
            Err(RecvError::TooManyFds { max: 3 })
        ));
        assert_eq!(copies_of(&pipe), before, "the received copies are closed");
        // The same datagram taken whole would have installed them.
        a.send(b"y", &borrowed[..3]).unwrap();
        let got = b.recv(&mut buf, 3).unwrap().unwrap();
        assert_eq!(copies_of(&pipe), before + 3);
        drop(got);
        assert_eq!(copies_of(&pipe), before);
    }

    #[test]
    fn empty_datagram_is_not_end_of_stream() {
        let (a, b) = Channel::pair().unwrap();
        a.send(b"", &[]).unwrap();
        let mut buf = [0u8; 10];
        let got = b.recv(&mut buf, 0).unwrap();
        assert!(matches!(got, Some(Received { len: 0, .. })));
        drop(a);
        assert!(b.recv(&mut buf, 0).unwrap().is_none());
    }

    #[test]
    fn abstract_and_empty_paths_are_refused() {
        assert!(Channel::connect(Path::new("")).is_err());
        assert!(Channel::connect(Path::new("\0spacer")).is_err());
    }

    #[test]
    fn a_channel_that_asks_learns_each_senders_uid_pid_and_pidfd() {
        let (a, mut b) = Channel::pair().unwrap();
        b.tell_senders().unwrap();
        a.send(b"x", &[]).unwrap();
        let mut buf = [0u8; 8];
        let got = b.recv(&mut buf, 0).unwrap().unwrap();
        let sender = got.sender.expect("a sender");
        let me = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
        assert_eq!(sender.uid, me);
        assert_eq!(sender.pid, std::process::id() as i32);
        let pidfd = sender.pidfd.expect("SO_PASSPIDFD (Linux 6.5)");
        assert!(crate::fd::is_pidfd(pidfd.as_fd()));
        // Rights on a message that takes none: refused, every fd closed,
        // the sender's pidfd with them.
        let (reader, writer) = std::io::pipe().unwrap();
        a.send(b"y", &[writer.as_fd()]).unwrap();
        drop(writer);
        assert!(matches!(b.recv(&mut buf, 0), Err(RecvError::UnexpectedFds)));
        assert_eq!(copies_of(&reader), 1);
        // Without asking, nothing is said.
        b.send(b"z", &[]).unwrap();
        assert!(a.recv(&mut buf, 0).unwrap().unwrap().sender.is_none());
    }
}
