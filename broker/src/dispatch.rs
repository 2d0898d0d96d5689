//! Step three: send an allowed request to the worker that serves it — the
//! room pool, the spawner (every subspace, at any depth), or a subspace's
//! own worker — and read its reply as what was made, or why not.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use spacer_policy::Op;
use spacer_proto::internal::{WorkerReply, WorkerRequest};
use spacer_proto::wire::ErrorKind;
use spacer_proto::{IdMaps, NsType, Spaces};

use crate::conn::{Backend, Conn};
use crate::ctx::Ctx;
use crate::pool::CallError;
use crate::request::Valid;
use crate::subspace::{worker_text, Unserved};

/// What a worker made, its fds in their places.
pub enum Made {
    /// Rooms: `fds[i]` is a namespace of type `types[i]`.
    Rooms {
        /// Types in fd order (the types asked for).
        types: Vec<NsType>,
        /// Inodes in fd order, as the worker says.
        inodes: Vec<u64>,
        /// The namespaces.
        fds: Vec<OwnedFd>,
    },
    /// A subspace.
    Subspace(NewSubspace),
}

/// A subspace the spawner started, not yet served.
pub struct NewSubspace {
    /// Whether it has a new user namespace.
    pub user: bool,
    /// Whether it has a new PID namespace.
    pub pid: bool,
    /// Its worker's pid (for logs).
    pub worker_pid: i32,
    /// The broker's end of the worker's channel.
    pub worker_chan: OwnedFd,
    /// The worker's pidfd.
    pub pidfd: OwnedFd,
    /// Its new namespaces, user first.
    pub ns: Vec<(NsType, OwnedFd)>,
    /// Ends the worker unless it comes into service.
    pub started: Unserved,
}

/// Why a dispatched request made nothing. The texts are the reasons
/// clients get.
#[derive(Debug, thiserror::Error)]
pub enum NotMade {
    /// No reply: no worker, the worker died or hung, or a subspace worker
    /// broke the protocol.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The worker found the request invalid itself.
    #[error("{0}")]
    WorkerInvalid(String),
    /// Making the namespaces failed in the worker.
    #[error("{0}")]
    WorkerFailed(String),
    /// A reply of another kind than the request.
    #[error("the worker answered another request")]
    OtherReply,
    /// Rooms of other types than asked.
    #[error("the worker made other namespaces than asked")]
    OtherNamespaces,
    /// A subspace reply without the fds it names.
    #[error("malformed subspace reply")]
    MalformedSubspace,
}

impl NotMade {
    /// The error kind the client gets.
    pub fn kind(&self) -> ErrorKind {
        match self {
            NotMade::Call(CallError::Unavailable(_)) => ErrorKind::Unavailable,
            NotMade::WorkerInvalid(_) => ErrorKind::Invalid,
            _ => ErrorKind::Failed,
        }
    }
}

/// Sends `req` of `conn`'s peer, with its subspace id `maps` if any, to
/// its worker. `requester` is the process that sent it, where that is
/// known and not the one that connected.
pub async fn dispatch(
    ctx: &Ctx,
    conn: &Conn<'_>,
    req: &Valid,
    maps: Option<&IdMaps>,
    requester: Option<&OwnedFd>,
) -> Result<Made, NotMade> {
    let peer = conn.peer;
    // Every subspace, at any depth, is started by the spawner; a nested one
    // in the user namespace its parent subspace serves in.
    let parent = match conn.backend {
        Backend::Subspace(link) => link.user_ns.as_ref().map(|ns| ns.as_fd()),
        Backend::Pool => None,
    };
    // New mount and UTS namespaces copy the requesting process's: the room
    // worker gets its pidfd (the kernel's, taken at connect; on a
    // subspace's conn, of the process that sent the request). A subspace
    // worker lives in them and its PID namespace hangs below the
    // requester's: the spawner gets it too.
    let requester = requester.or(peer.pidfd.as_ref());
    let caller = match (req.op, conn.backend) {
        (Op::Rooms, Backend::Pool) if req.spaces.intersects(Spaces::MNT | Spaces::UTS) => {
            requester.map(|p| p.as_fd())
        }
        (Op::Subspace, _) => requester.map(|p| p.as_fd()),
        _ => None,
    };
    let request = |id| match req.op {
        Op::Rooms => WorkerRequest::Rooms {
            id,
            spaces: req.spaces.bits(),
            options: req.options.clone(),
            uid: peer.uid,
            caller: caller.is_some(),
        },
        Op::Subspace => WorkerRequest::Subspace {
            id,
            spaces: req.spaces.bits(),
            uid: peer.uid,
            gid: peer.gid,
            parent: parent.is_some(),
            caller: caller.is_some(),
            maps: maps.cloned(),
        },
    };
    let (reply, fds, started) = match (req.op, conn.backend) {
        (Op::Subspace, _) => {
            let fds: Vec<BorrowedFd<'_>> = parent.into_iter().chain(caller).collect();
            ctx.spawner.call(peer.account(), request, &fds).await?
        }
        (Op::Rooms, Backend::Pool) => {
            let fds: Vec<BorrowedFd<'_>> = caller.into_iter().collect();
            ctx.pool.call(peer.account(), request, &fds).await?
        }
        (Op::Rooms, Backend::Subspace(link)) => {
            let (reply, fds) = link.call(request, ctx.pool.timeout()).await?;
            (reply, fds, None)
        }
    };
    let started = started.map(|mut s| {
        s.uid = peer.account();
        s
    });
    made(reply, fds, started, req, conn.backend)
}

/// Reads a worker's reply to `req` as what it made: a reply of the kind
/// the request asks for, a subspace only from the spawner.
fn made(
    reply: WorkerReply,
    fds: Vec<OwnedFd>,
    started: Option<Unserved>,
    req: &Valid,
    backend: &Backend,
) -> Result<Made, NotMade> {
    match (req.op, reply, started) {
        (Op::Rooms, WorkerReply::Rooms { types, inodes, .. }, _) => {
            if Spaces::of(types.iter().copied()) != req.spaces {
                let what = "rooms of other types than asked";
                return Err(misbehaved(backend, what, NotMade::OtherNamespaces));
            }
            Ok(Made::Rooms { types, inodes, fds })
        }
        (
            Op::Subspace,
            WorkerReply::Subspace {
                user,
                pid,
                worker_pid,
                ..
            },
            Some(started),
        ) => {
            let mut fds = fds.into_iter();
            let (Some(worker_chan), Some(pidfd)) = (fds.next(), fds.next()) else {
                return Err(NotMade::MalformedSubspace);
            };
            let ns = [(user, NsType::User), (pid, NsType::Pid)]
                .into_iter()
                .filter(|(asked, _)| *asked)
                .map(|(_, t)| t)
                .zip(fds)
                .collect();
            Ok(Made::Subspace(NewSubspace {
                user,
                pid,
                worker_pid,
                worker_chan,
                pidfd,
                ns,
                started,
            }))
        }
        (_, WorkerReply::Invalid { reason, .. }, _) => {
            Err(NotMade::WorkerInvalid(reason_from(backend, req.op, reason)))
        }
        (_, WorkerReply::Failed { reason, .. }, _) => {
            Err(NotMade::WorkerFailed(reason_from(backend, req.op, reason)))
        }
        // A subspace worker that answers rooms with another kind of reply
        // (a subspace of its own, say, with a user namespace of its
        // choosing) breaks the protocol: its subspace is closed. (Subspace
        // requests go to the spawner.)
        (Op::Rooms, ..) => Err(misbehaved(
            backend,
            "a reply of another kind",
            NotMade::OtherReply,
        )),
        _ => Err(NotMade::OtherReply),
    }
}

/// A reply to a rooms request that breaks the protocol (`what`): through a
/// subspace, its worker's doing, and the subspace is closed; from a room
/// worker, `from_pool`.
fn misbehaved(backend: &Backend, what: &'static str, from_pool: NotMade) -> NotMade {
    match backend {
        Backend::Subspace(link) => {
            tracing::warn!(target: "spacer::event", event = "subspace_protocol_error", subspace = link.id, reason = what, "subspace worker misbehaved; closing it");
            NotMade::Call(CallError::Protocol(what))
        }
        Backend::Pool => from_pool,
    }
}

/// A worker's reason as passed on: a subspace worker's (rooms made through
/// a subspace) is marked as its own words and bounded.
fn reason_from(backend: &Backend, op: Op, reason: String) -> String {
    match (backend, op) {
        (Backend::Subspace(_), Op::Rooms) => worker_text(&reason),
        _ => reason,
    }
}
