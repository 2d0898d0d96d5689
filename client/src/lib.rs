//! # spacer-client
//!
//! Ask a spacer broker for new Linux namespaces. Trust level: runs in the
//! caller's process with the caller's privileges; it believes nothing the
//! other side sends unchecked (every received fd is verified by kind and
//! slot, and closed if it makes no sense).
//!
//! ```no_run
//! use spacer_client::{Client, Spaces};
//!
//! # fn main() -> Result<(), spacer_client::Error> {
//! let client = Client::connect("/run/spacer/spacer.sock")?;
//! let rooms = client.rooms(Spaces::NET | Spaces::UTS)?;
//! let net = rooms.net.expect("asked for net"); // an OwnedFd, closed on drop
//! # drop(net);
//! # Ok(())
//! # }
//! ```
//!
//! Errors separate *denied by policy* ([`Error::Denied`]), *failed in the
//! worker* ([`Error::Failed`]), a wrong request ([`Error::Invalid`]), the
//! service being unavailable, and transport or protocol trouble.

#![deny(unsafe_code)]

#[cfg(feature = "cli")]
pub mod cli;
mod join;
mod private;
#[allow(unsafe_code)]
mod sys;

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub use join::{run_in, CommandExt, Join};
use private::PrivateWorker;
pub use private::{find_worker, INSTALLED_WORKER, WORKER_ENV, WORKER_NAME};
use spacer_proto::internal::{InternalError, Trust, WorkerReply, WorkerRequest};
pub use spacer_proto::wire::Rooms;
use spacer_proto::wire::{
    self, decode_reply, ErrorKind, Reply, Request, ResponseError, SubspaceFds,
};
pub use spacer_proto::MapChoice;
use spacer_proto::{Channel, IdMaps, MessageError, RecvError};
pub use spacer_proto::{NsType, Offset, OptionError, RoomOption, RoomOptions, Spaces};

/// The socket used when neither a path nor `SPACER_SOCKET` is given.
pub const DEFAULT_SOCKET: &str = "/run/spacer/spacer.sock";

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The policy does not allow this (or a limit is reached). Only a broker
    /// says this; a private worker has no policy.
    #[error("denied: {0}")]
    Denied(String),
    /// Allowed, but creating the namespaces failed in the worker.
    #[error("failed: {0}")]
    Failed(String),
    /// The request asks for something it cannot (e.g. "out of space").
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The service cannot serve right now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Connecting to the broker failed.
    #[error("cannot connect to {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error("talking to the service")]
    Io(#[source] io::Error),
    /// The service closed the connection.
    #[error("the service closed the connection")]
    Closed,
    /// A response could not be believed; every fd that came with it is closed.
    #[error("bad response from the service")]
    Protocol(#[source] ProtocolError),
    /// Private mode: no `spacer-private-worker` binary was found.
    #[error("cannot find spacer-private-worker (looked at {}); set SPACER_PRIVATE_WORKER to its path", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoWorker {
        /// Where it looked.
        tried: Vec<PathBuf>,
    },
    /// A namespace could not be joined.
    #[error("cannot join the {ns} namespace")]
    Join {
        /// Which type.
        ns: NsType,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Why a response was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The datagram itself.
    #[error(transparent)]
    Recv(#[from] RecvError),
    /// Its content or fds.
    #[error(transparent)]
    Response(#[from] ResponseError),
    /// The namespaces handed out are not the ones asked for.
    #[error("asked for {asked}, got {got}")]
    Mismatch {
        /// Requested types.
        asked: Spaces,
        /// Received types.
        got: Spaces,
    },
    /// A reply to another request than the one sent.
    #[error("a reply to another request")]
    WrongId,
    /// A response of the wrong kind.
    #[error("a {0} response to another request")]
    WrongKind(&'static str),
}

impl Error {
    /// Whether the policy said no.
    pub fn is_denied(&self) -> bool {
        matches!(self, Error::Denied(_))
    }
}

/// A new subspace (see [`Client::subspace`]). The receiver owns every fd.
#[derive(Debug)]
pub struct Subspace {
    /// A pidfd of the process serving the subspace.
    pub pidfd: OwnedFd,
    /// The new user namespace, owned by the caller's uid, if asked for.
    pub user: Option<OwnedFd>,
    /// The new PID namespace, if asked for. It is empty: the first process
    /// started in it (after `setns`) is its PID 1.
    pub pid: Option<OwnedFd>,
}

/// A connection to a spacer service: the broker, a private worker, or a
/// subspace of either.
#[derive(Debug)]
pub struct Client {
    chan: Channel,
    /// One request at a time per connection.
    turn: Mutex<()>,
    speaks: Speaks,
    next_id: AtomicU64,
    /// Private mode: the worker this client started. Declared after `chan`
    /// so that the channel closes first (the worker then exits).
    worker: Option<PrivateWorker>,
}

/// Who is on the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaks {
    /// The broker (the client protocol of `docs/PROTOCOL.md`).
    Broker,
    /// A worker directly (private mode).
    Worker,
}

/// The environment variable naming an inherited subspace connection (see
/// [`Client::connect_default`]).
pub const FD_ENV: &str = "SPACER_FD";

impl std::os::fd::AsFd for Client {
    /// The connection (for handing it to a child process).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.chan.as_fd()
    }
}

impl Client {
    /// Connects to the broker at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, Error> {
        let path = path.as_ref();
        let chan = Channel::connect(path).map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })?;
        Ok(Client::from_channel(chan))
    }

    /// The connection `$SPACER_FD` names (a subspace connection that
    /// `spacer run` passed to its command: requests then go to that
    /// subspace), else `$SPACER_SOCKET`, else [`DEFAULT_SOCKET`]. Empty
    /// variables count as unset.
    pub fn connect_default() -> Result<Client, Error> {
        let set = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(v) = set(FD_ENV) {
            let n: std::os::fd::RawFd =
                v.to_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                    Error::Io(std::io::Error::other(format!("{FD_ENV} is no fd number")))
                })?;
            let fd = crate::sys::dup_inherited(n).map_err(|e| {
                Error::Io(std::io::Error::other(format!(
                    "{FD_ENV}={n} is no connection this process inherited: {e}"
                )))
            })?;
            return Client::from_fd(fd);
        }
        let path = set("SPACER_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        Client::connect(path)
    }

    /// A client on a broker connection someone handed you (another
    /// process's connection, or a subspace's `conn`). It acts as the process
    /// that opened the connection: the broker identifies peers at connect
    /// time.
    pub fn from_fd(fd: OwnedFd) -> Result<Client, Error> {
        Ok(Client::from_channel(
            Channel::from_fd(fd).map_err(Error::Io)?,
        ))
    }

    fn from_channel(chan: Channel) -> Client {
        Client::with(chan, Speaks::Broker, None)
    }

    fn with(chan: Channel, speaks: Speaks, worker: Option<PrivateWorker>) -> Client {
        Client {
            chan,
            turn: Mutex::new(()),
            speaks,
            next_id: AtomicU64::new(1),
            worker,
        }
    }

    /// Private mode: starts a `spacer-private-worker` of your own (see
    /// [`find_worker`]) — no broker, no policy, no audit. The worker acts
    /// with your process's privileges and nothing more: as root it makes
    /// everything; unprivileged, where the kernel allows unprivileged user
    /// namespaces, ask for `Subspace(user)` first and make rooms inside it.
    /// Dropping this `Client` (or your process dying) ends the worker and
    /// every subspace worker below it.
    ///
    /// ```
    /// use spacer_client::{Client, Spaces};
    ///
    /// let spacer = Client::private()?;
    /// let rooms = if nix::unistd::geteuid().is_root() {
    ///     spacer.rooms(Spaces::NET)?
    /// } else {
    ///     // Host rooms need CAP_SYS_ADMIN, which the worker has only if you do.
    ///     assert!(matches!(spacer.rooms(Spaces::NET), Err(spacer_client::Error::Failed(_))));
    ///     // Rooms inside a user namespace of your own do not.
    ///     let (inside, _sub) = spacer.subspace(Spaces::USER)?;
    ///     inside.rooms(Spaces::NET)?
    /// };
    /// assert!(rooms.net.is_some());
    /// # Ok::<(), spacer_client::Error>(())
    /// ```
    pub fn private() -> Result<Client, Error> {
        Client::private_with(&find_worker()?)
    }

    /// Private mode with the worker binary at `worker`.
    pub fn private_with(worker: &Path) -> Result<Client, Error> {
        let (chan, w) = PrivateWorker::start(worker)?;
        Ok(Client::with(chan, Speaks::Worker, Some(w)))
    }

    /// The pid of the process serving this connection, as the kernel
    /// recorded it (`SO_PEERCRED`): the broker, or a private worker.
    pub fn service_pid(&self) -> Option<i32> {
        self.chan.peer_credentials().ok().map(|c| c.pid)
    }

    /// The pid of the private worker this client started, if any.
    pub fn private_worker_pid(&self) -> Option<u32> {
        self.worker.as_ref().map(PrivateWorker::pid)
    }

    /// New namespaces, one per type in `spaces` (cgroup, ipc, mnt, net,
    /// time, uts). All or nothing: the result holds exactly the types asked
    /// for.
    pub fn rooms(&self, spaces: Spaces) -> Result<Rooms, Error> {
        self.rooms_with(spaces, &RoomOptions::new())
    }

    /// New namespaces as [`Client::rooms`] makes them, each prepared first
    /// as `options` ask: `lo` up in a new network namespace, host and domain
    /// names in a new UTS namespace, clock offsets in a new time namespace
    /// (which only its creator can set, before anyone enters). Each option
    /// needs its namespace type in `spaces`, and the broker's policy must
    /// allow it; a bad option is [`Error::Invalid`] and nothing is created.
    ///
    /// ```no_run
    /// use spacer_client::{Client, Offset, RoomOptions, Spaces};
    ///
    /// # fn main() -> Result<(), spacer_client::Error> {
    /// let client = Client::connect("/run/spacer/spacer.sock")?;
    /// let opts = RoomOptions::new()
    ///     .loopback_up()
    ///     .hostname("box")
    ///     .boottime_offset(Offset::from_secs(86_400));
    /// let rooms = client.rooms_with(Spaces::NET | Spaces::UTS | Spaces::TIME, &opts)?;
    /// # drop(rooms);
    /// # Ok(())
    /// # }
    /// ```
    pub fn rooms_with(&self, spaces: Spaces, options: &RoomOptions) -> Result<Rooms, Error> {
        match self.call(Request::Rooms {
            spaces: spaces.bits(),
            options: options.clone(),
        })? {
            Reply::Rooms(rooms) => {
                let got = rooms.spaces();
                if got != spaces {
                    return Err(Error::Protocol(ProtocolError::Mismatch {
                        asked: spaces,
                        got,
                    }));
                }
                Ok(rooms)
            }
            Reply::Subspace(_) => Err(Error::Protocol(ProtocolError::WrongKind("subspace"))),
            Reply::Error { .. } => unreachable!("errors are turned into Err by call"),
        }
    }

    /// A new user and/or PID namespace (at least one, nothing else) with a
    /// service of its own: the returned `Client` makes namespaces *inside*
    /// them. A new user namespace maps the caller's uid and gid to 0 and is
    /// owned by the caller, so the caller can enter it, and everything made
    /// through the returned client, without any privilege. Dropping that
    /// `Client` ends the subspace's service (not the namespaces: they live
    /// as long as something holds them).
    pub fn subspace(&self, spaces: Spaces) -> Result<(Client, Subspace), Error> {
        self.subspace_mapped(spaces, MapChoice::Root)
    }

    /// [`subspace`](Client::subspace) with a choice of id maps for a new
    /// user namespace: [`MapChoice::Current`] keeps the caller's uid and gid
    /// inside (`unshare --map-current-user`); [`MapChoice::Auto`] maps the
    /// caller to 0 and, from 1 on, the subordinate ids `/etc/subuid` and
    /// `/etc/subgid` give it, if the policy grants `subids`
    /// (`unshare --map-auto`; not in private mode).
    pub fn subspace_mapped(
        &self,
        spaces: Spaces,
        map: MapChoice,
    ) -> Result<(Client, Subspace), Error> {
        match self.call(Request::Subspace {
            spaces: spaces.bits(),
            map,
        })? {
            Reply::Subspace(s) => {
                let got = [
                    (s.user.is_some(), Spaces::USER),
                    (s.pid.is_some(), Spaces::PID),
                ]
                .into_iter()
                .filter(|(has, _)| *has)
                .fold(Spaces::empty(), |a, (_, f)| a | f);
                if got != spaces {
                    return Err(Error::Protocol(ProtocolError::Mismatch {
                        asked: spaces,
                        got,
                    }));
                }
                let chan = Channel::from_fd(s.conn).map_err(Error::Io)?;
                Ok((
                    Client::with(chan, self.speaks, None),
                    Subspace {
                        pidfd: s.pidfd,
                        user: s.user,
                        pid: s.pid,
                    },
                ))
            }
            Reply::Rooms(_) => Err(Error::Protocol(ProtocolError::WrongKind("rooms"))),
            Reply::Error { .. } => unreachable!("errors are turned into Err by call"),
        }
    }

    /// One round trip. Error responses become `Err`.
    fn call(&self, req: Request) -> Result<Reply, Error> {
        match self.speaks {
            Speaks::Broker => self.call_broker(req),
            Speaks::Worker => self.call_worker(req),
        }
    }

    /// Private mode: the worker's own protocol, checked as strictly.
    fn call_worker(&self, req: Request) -> Result<Reply, Error> {
        let _turn = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let msg = match req {
            Request::Rooms { spaces, options } => WorkerRequest::Rooms {
                id,
                spaces,
                options,
                uid: nix::unistd::geteuid().as_raw(),
                caller: false,
            },
            Request::Subspace { spaces, map } => {
                let (uid, gid) = (
                    nix::unistd::geteuid().as_raw(),
                    nix::unistd::getegid().as_raw(),
                );
                let maps = match map {
                    MapChoice::Root => None,
                    MapChoice::Current => Some(IdMaps::single(uid, uid, gid, gid)),
                    MapChoice::Auto => return Err(Error::Failed(
                        "subordinate ids are granted by the broker's policy, not in private mode"
                            .into(),
                    )),
                };
                WorkerRequest::Subspace {
                    id,
                    spaces,
                    uid,
                    gid,
                    parent: false,
                    caller: false,
                    maps,
                }
            }
        };
        self.chan.send_msg(&msg, &[]).map_err(Error::Io)?;
        // A private worker is the caller's own, but its fds are checked by
        // kind like any other (an LSM may drop fds in flight).
        let mut buf = vec![0u8; spacer_proto::internal::MAX_BYTES];
        let (reply, fds) = match self.chan.recv_msg::<WorkerReply>(&mut buf, Trust::Kinds) {
            Ok(Some(got)) => got,
            Ok(None) => return Err(Error::Closed),
            Err(MessageError::Recv(RecvError::Io(e))) => return Err(Error::Io(e)),
            Err(MessageError::Recv(e)) => return Err(Error::Protocol(e.into())),
            Err(MessageError::Message(InternalError::FdMismatch)) => {
                return Err(Error::Protocol(ProtocolError::Response(
                    ResponseError::FdMismatch,
                )))
            }
            Err(_) => {
                return Err(Error::Protocol(ProtocolError::Response(
                    ResponseError::Malformed,
                )))
            }
        };
        if reply.id() != id {
            return Err(Error::Protocol(ProtocolError::WrongId));
        }
        let mut fds = fds.into_iter();
        match reply {
            WorkerReply::Rooms { types, .. } => {
                let mut rooms = Rooms::default();
                for (t, fd) in types.into_iter().zip(fds) {
                    if let Some(slot) = rooms.slot_mut(t) {
                        *slot = Some(fd);
                    }
                }
                Ok(Reply::Rooms(rooms))
            }
            WorkerReply::Subspace { user, pid, .. } => {
                let (Some(conn), Some(pidfd)) = (fds.next(), fds.next()) else {
                    return Err(Error::Protocol(ProtocolError::Response(
                        ResponseError::FdMismatch,
                    )));
                };
                let user = if user { fds.next() } else { None };
                let pid = if pid { fds.next() } else { None };
                Ok(Reply::Subspace(SubspaceFds {
                    conn,
                    pidfd,
                    user,
                    pid,
                }))
            }
            WorkerReply::Invalid { reason, .. } => Err(Error::Invalid(reason)),
            WorkerReply::Failed { reason, .. } => Err(Error::Failed(reason)),
            WorkerReply::Ended { .. } | WorkerReply::Alive { .. } => Err(Error::Protocol(
                ProtocolError::Response(ResponseError::FdMismatch),
            )),
        }
    }

    fn call_broker(&self, req: Request) -> Result<Reply, Error> {
        let _turn = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.chan.send(&req.encode(), &[]) {
            // The service may have closed after leaving its reason (a refused
            // connection does): read it rather than report the broken pipe.
            if !matches!(e.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET)) {
                return Err(Error::Io(e));
            }
        }
        let mut buf = vec![0u8; wire::MAX_RESPONSE_BYTES];
        let mut recv = || self.chan.recv(&mut buf, wire::MAX_RESPONSE_FDS);
        let first = recv();
        // A service that closed with our request unread makes the kernel
        // report ECONNRESET once, ahead of any datagram it left: read on.
        let got = match first {
            Err(RecvError::Io(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => recv(),
            other => other,
        };
        let got = match got {
            Ok(Some(got)) => got,
            Ok(None) => return Err(Error::Closed),
            Err(RecvError::Io(e)) => return Err(Error::Io(e)),
            Err(e) => return Err(Error::Protocol(e.into())),
        };
        match decode_reply(&buf[..got.len], got.fds) {
            Ok(Reply::Error { kind, reason }) => Err(match kind {
                ErrorKind::Denied => Error::Denied(reason),
                ErrorKind::Failed => Error::Failed(reason),
                ErrorKind::Invalid => Error::Invalid(reason),
                _ => Error::Unavailable(reason),
            }),
            Ok(reply) => Ok(reply),
            Err(e) => Err(Error::Protocol(e.into())),
        }
    }
}

/// The README's Rust examples, compiled as doc tests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
