//! Messages between the broker and the workers. They never travel on a
//! client connection: the broker decodes client datagrams only as
//! `spacer_proto::wire::Request`, and the workers decode only these types.
//!
//! Encoded compactly (MessagePack arrays via `rmp-serde`); both ends must
//! come from the same build, which [`VERSION`] checks.

use std::os::fd::{AsFd, OwnedFd};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::fd;
use crate::idmap::IdMaps;
use crate::ns::{NsType, Spaces};
use crate::options::RoomOptions;

/// The version of these messages. They are positional MessagePack arrays,
/// so a worker binary from another build would misread them: the caller
/// passes its version when it starts the worker
/// ([`crate::launch::worker_command`]), which refuses to run for any
/// other. Raise it whenever a message here changes.
pub const VERSION: u32 = 2;

/// The largest internal datagram (bytes).
pub const MAX_BYTES: usize = 4096;
/// The most fds an internal message carries.
pub const MAX_FDS: usize = 6;
/// The most rooms one [`WorkerRequest::Alive`] asks about (fits
/// [`MAX_BYTES`] with room to spare).
pub const MAX_ALIVE: usize = 128;

/// Broker → worker (and subspace worker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerRequest {
    /// Create rooms; `spaces` and `options` are re-checked by the worker.
    Rooms {
        /// Matches the reply to the request.
        id: u64,
        /// `CLONE_NEW*` bits.
        spaces: u64,
        /// What to do in the new namespaces first.
        options: RoomOptions,
        /// The requester's uid on the host: a room worker makes the rooms
        /// with it as its effective uid, so the kernel charges them to the
        /// requester's per-user namespace limits (a subspace or private
        /// worker is the requester already and ignores it).
        uid: u32,
        /// A pidfd of the requesting process is attached: new mount and UTS
        /// namespaces copy *its* (a room worker's only).
        caller: bool,
    },
    /// To a room worker: which of these namespaces still exist (the
    /// broker counts live rooms). Each is `(id, inode)` as in
    /// [`crate::fd::namespace_handle`], all of type `nstype`.
    Alive {
        /// Matches the reply to the request.
        id: u64,
        /// Their type.
        nstype: NsType,
        /// At most [`MAX_ALIVE`] of them.
        rooms: Vec<(u64, u32)>,
    },
    /// Create a subspace owned by `uid`/`gid` (the peer's ids on the host;
    /// a private or subspace worker ignores them and uses its own, which
    /// are the same requester's).
    Subspace {
        /// Matches the reply to the request.
        id: u64,
        /// `CLONE_NEW*` bits.
        spaces: u64,
        /// The requester's uid.
        uid: u32,
        /// The requester's gid.
        gid: u32,
        /// To the broker's spawner only: an fd is attached, the user
        /// namespace the new subspace is made in (the one its parent
        /// subspace serves in); without it, the host's.
        parent: bool,
        /// To the spawner only: a pidfd of the requesting process is
        /// attached (after the parent's): the subspace worker lives in its
        /// mount and UTS namespaces, so the rooms it makes copy those.
        caller: bool,
        /// The id maps of a new user namespace, if not `0 <uid> 1` and
        /// `0 <gid> 1` (checked again by the worker: [`IdMaps::check`]).
        maps: Option<IdMaps>,
    },
    /// To the broker's spawner: the subspace worker `pid` it started is to
    /// end (its connection closed): killed, whatever state it is in.
    End {
        /// Matches the reply to the request.
        id: u64,
        /// As reported in [`WorkerReply::Subspace`].
        pid: i32,
    },
}

impl WorkerRequest {
    /// The request id.
    pub fn id(&self) -> u64 {
        match *self {
            WorkerRequest::Rooms { id, .. }
            | WorkerRequest::Alive { id, .. }
            | WorkerRequest::Subspace { id, .. }
            | WorkerRequest::End { id, .. } => id,
        }
    }
}

/// Worker → broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerReply {
    /// Rooms made: fd `i` is a namespace of type `types[i]`.
    Rooms {
        /// Matches the request.
        id: u64,
        /// Types in fd order.
        types: Vec<NsType>,
        /// The namespaces' inode numbers, in fd order (for the audit log;
        /// the broker reads them itself from an untrusted subspace worker).
        inodes: Vec<u64>,
    },
    /// Subspace made: fds are its channel, its pidfd, then the user and PID
    /// namespaces that were asked for.
    Subspace {
        /// Matches the request.
        id: u64,
        /// Whether a user namespace fd is attached.
        user: bool,
        /// Whether a PID namespace fd is attached.
        pid: bool,
        /// The subspace worker's pid in the broker's PID namespace view of
        /// the worker (for logs only; the pidfd is the reference).
        worker_pid: i32,
    },
    /// For each room asked about, in order: whether it still exists.
    Alive {
        /// Matches the request.
        id: u64,
        /// One per room.
        alive: Vec<bool>,
    },
    /// The subspace worker asked to end was killed (or had gone).
    Ended {
        /// Matches the request.
        id: u64,
    },
    /// The worker refused the request itself (its own validation).
    Invalid {
        /// Matches the request.
        id: u64,
        /// A protocol reason such as "out of space".
        reason: String,
    },
    /// Creating the namespaces failed; nothing was created.
    Failed {
        /// Matches the request.
        id: u64,
        /// The operation and errno, e.g. "creating net namespace: ...".
        reason: String,
    },
}

impl WorkerReply {
    /// The id of the request this answers.
    pub fn id(&self) -> u64 {
        match *self {
            WorkerReply::Rooms { id, .. }
            | WorkerReply::Subspace { id, .. }
            | WorkerReply::Ended { id }
            | WorkerReply::Alive { id, .. }
            | WorkerReply::Invalid { id, .. }
            | WorkerReply::Failed { id, .. } => id,
        }
    }
}

/// What a serving worker started by the supervisor does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerKind {
    /// Makes rooms in the host's namespaces.
    Rooms,
    /// Starts every subspace worker, at any depth (the *spawner*): a
    /// process that never sees a room request or its options, so no
    /// subspace worker carries another request's data.
    Subspaces,
}

/// Broker → worker supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SupervisorRequest {
    /// Start one more serving worker of this kind.
    Spawn {
        /// What it serves.
        kind: WorkerKind,
    },
    /// Kill the serving worker with this pid (a hung one).
    Kill {
        /// As reported in [`SupervisorReply::Spawned`].
        pid: i32,
    },
}

/// Worker supervisor → broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SupervisorReply {
    /// A serving worker started; fds are its channel and its pidfd.
    Spawned {
        /// Its pid.
        pid: i32,
    },
    /// Starting one failed.
    Failed {
        /// Why.
        reason: String,
    },
}

/// A new subspace worker → the worker that started it, once, when it is
/// ready to serve: fds are its user and PID namespaces as flagged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubspaceReady {
    /// Serving.
    Ready {
        /// A user namespace fd is attached.
        user: bool,
        /// A PID namespace fd is attached.
        pid: bool,
    },
    /// Setting up failed; the process exits after sending this.
    Failed {
        /// The operation and errno.
        reason: String,
    },
}

/// Why an internal message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InternalError {
    /// Not a message of the expected type.
    #[error("malformed internal message")]
    Malformed,
    /// The fds do not match what the message says.
    #[error("internal message fds do not match its content")]
    FdMismatch,
}

/// How far a receiver trusts the fds a message comes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Counted only: a sender with more privilege than the receiver (the
    /// broker's own host workers, whose fds every client checks by kind
    /// again).
    Counts,
    /// Each fd's kind asked of the kernel: a sender that runs as a tenant
    /// (a subspace worker), a private worker, and the broker as the worker
    /// sees it.
    Kinds,
}

/// A message of this module: what it decodes from, and which fds it says
/// come with it. Decoding and the fd check live here, for every end.
pub trait Message: Serialize + DeserializeOwned {
    /// The most fds one carries.
    const MAX_FDS: usize;

    /// Whether `fds` are what this message says: as many, in order, and
    /// with [`Trust::Kinds`] each of the kind its place says.
    fn fds_match(&self, fds: &[OwnedFd], trust: Trust) -> bool;

    /// Decodes one message (exactly one: trailing bytes are refused) with
    /// the fds that came with it. On any error every fd is closed.
    fn take(
        bytes: &[u8],
        fds: Vec<OwnedFd>,
        trust: Trust,
    ) -> Result<(Self, Vec<OwnedFd>), InternalError> {
        Self::check(bytes, &fds, trust).map(|msg| (msg, fds))
    }

    /// [`Message::take`] without taking the fds: on an error the caller
    /// disposes of them (e.g. off its event loop, see
    /// [`crate::Channel::discard_fds`]).
    fn check(bytes: &[u8], fds: &[OwnedFd], trust: Trust) -> Result<Self, InternalError> {
        let msg: Self = decode(bytes)?;
        if !msg.fds_match(fds, trust) {
            return Err(InternalError::FdMismatch);
        }
        Ok(msg)
    }
}

/// Whether `fds` are, in order, namespaces of these types (each checked
/// with the kernel only if `trust` asks).
fn namespaces(fds: &[OwnedFd], types: &[NsType], trust: Trust) -> bool {
    fds.len() == types.len()
        && (trust == Trust::Counts
            || types
                .iter()
                .zip(fds)
                .all(|(t, f)| fd::namespace_type(f.as_fd()).ok() == Some(*t)))
}

/// Whether `f` is a pidfd, if `trust` asks.
fn pidfd(f: &OwnedFd, trust: Trust) -> bool {
    trust == Trust::Counts || fd::is_pidfd(f.as_fd())
}

/// Whether `f` is an `AF_UNIX` `SOCK_SEQPACKET` socket, if `trust` asks.
fn seqpacket(f: &OwnedFd, trust: Trust) -> bool {
    trust == Trust::Counts || fd::is_unix_seqpacket(f.as_fd())
}

fn flagged(flags: &[(bool, NsType)]) -> Vec<NsType> {
    flags
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, t)| *t)
        .collect()
}

impl Message for WorkerRequest {
    const MAX_FDS: usize = 2;

    /// A room request's requester pidfd; a subspace request's parent user
    /// namespace, then the requester's pidfd.
    fn fds_match(&self, fds: &[OwnedFd], trust: Trust) -> bool {
        match *self {
            WorkerRequest::Rooms { caller, .. } => match fds {
                [] => !caller,
                [p] => caller && pidfd(p, trust),
                _ => false,
            },
            WorkerRequest::Subspace { parent, caller, .. } => {
                let want = usize::from(parent) + usize::from(caller);
                fds.len() == want
                    && (!parent || namespaces(&fds[..1], &[NsType::User], trust))
                    && (!caller || pidfd(&fds[want - 1], trust))
            }
            WorkerRequest::Alive { .. } | WorkerRequest::End { .. } => fds.is_empty(),
        }
    }
}

impl Message for WorkerReply {
    const MAX_FDS: usize = MAX_FDS;

    /// Rooms: one namespace per type, each type once, rooms types only.
    /// Subspace: its channel, its pidfd, then the user and PID namespaces
    /// as flagged. Nothing with the others.
    fn fds_match(&self, fds: &[OwnedFd], trust: Trust) -> bool {
        match self {
            WorkerReply::Rooms { types, inodes, .. } => {
                let set = Spaces::of(types.iter().copied());
                inodes.len() == types.len()
                    && set.types().count() == types.len()
                    && Spaces::ROOMS.contains(set)
                    && namespaces(fds, types, trust)
            }
            WorkerReply::Subspace { user, pid, .. } => match fds {
                [chan, pidfd_, rest @ ..] => {
                    (*user || *pid)
                        && seqpacket(chan, trust)
                        && pidfd(pidfd_, trust)
                        && namespaces(
                            rest,
                            &flagged(&[(*user, NsType::User), (*pid, NsType::Pid)]),
                            trust,
                        )
                }
                _ => false,
            },
            WorkerReply::Ended { .. }
            | WorkerReply::Alive { .. }
            | WorkerReply::Invalid { .. }
            | WorkerReply::Failed { .. } => fds.is_empty(),
        }
    }
}

impl Message for SupervisorRequest {
    const MAX_FDS: usize = 0;

    fn fds_match(&self, fds: &[OwnedFd], _: Trust) -> bool {
        fds.is_empty()
    }
}

impl Message for SupervisorReply {
    const MAX_FDS: usize = 2;

    /// Spawned: the worker's channel and its pidfd.
    fn fds_match(&self, fds: &[OwnedFd], trust: Trust) -> bool {
        match (self, fds) {
            (SupervisorReply::Spawned { .. }, [chan, p]) => {
                seqpacket(chan, trust) && pidfd(p, trust)
            }
            (SupervisorReply::Failed { .. }, []) => true,
            _ => false,
        }
    }
}

impl Message for SubspaceReady {
    const MAX_FDS: usize = 2;

    /// The user and PID namespaces as flagged.
    fn fds_match(&self, fds: &[OwnedFd], trust: Trust) -> bool {
        match self {
            SubspaceReady::Ready { user, pid } => namespaces(
                fds,
                &flagged(&[(*user, NsType::User), (*pid, NsType::Pid)]),
                trust,
            ),
            SubspaceReady::Failed { .. } => fds.is_empty(),
        }
    }
}

/// Decodes one MessagePack value that must fill `bytes` exactly: `Ok(None)`
/// when bytes are left after it. The client wire format decodes with it
/// too (`spacer-proto`).
pub fn from_slice_exact<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<Option<T>, rmp_serde::decode::Error> {
    let value: T = rmp_serde::from_slice(bytes)?;
    // Where the first value ends (no borrowing needed to skip it).
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    serde::de::IgnoredAny::deserialize(&mut de)?;
    if de.position() == bytes.len() as u64 {
        Ok(Some(value))
    } else {
        Ok(None)
    }
}

/// Encodes an internal message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    rmp_serde::to_vec(msg).expect("internal messages always encode")
}

/// Decodes an internal message (exactly one: trailing bytes are refused).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, InternalError> {
    from_slice_exact(bytes)
        .ok()
        .flatten()
        .ok_or(InternalError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let reqs = [
            WorkerRequest::Rooms {
                id: 1,
                spaces: 42,
                options: RoomOptions::new().hostname("box"),
                uid: 4242,
                caller: true,
            },
            WorkerRequest::Alive {
                id: 9,
                nstype: NsType::Net,
                rooms: vec![(u64::MAX, u32::MAX); MAX_ALIVE],
            },
            WorkerRequest::Subspace {
                id: u64::MAX,
                spaces: 7,
                uid: 1000,
                gid: 100,
                parent: true,
                caller: true,
                maps: None,
            },
            WorkerRequest::Subspace {
                id: u64::MAX,
                spaces: 7,
                uid: u32::MAX,
                gid: u32::MAX,
                parent: false,
                caller: true,
                maps: Some(IdMaps {
                    uid: vec![
                        crate::Extent {
                            inside: u32::MAX,
                            outside: u32::MAX,
                            count: u32::MAX
                        };
                        crate::idmap::MAX_EXTENTS
                    ],
                    gid: vec![
                        crate::Extent {
                            inside: u32::MAX,
                            outside: u32::MAX,
                            count: u32::MAX
                        };
                        crate::idmap::MAX_EXTENTS
                    ],
                }),
            },
            WorkerRequest::End { id: 2, pid: 77 },
        ];
        for r in reqs {
            assert!(encode(&r).len() <= MAX_BYTES);
            assert_eq!(decode::<WorkerRequest>(&encode(&r)), Ok(r));
        }
        let reply = WorkerReply::Rooms {
            id: 3,
            types: vec![NsType::Net, NsType::Time],
            inodes: vec![1, 2],
        };
        assert_eq!(decode::<WorkerReply>(&encode(&reply)), Ok(reply));
        // A worker reply is not a request, and a client request is neither.
        assert!(decode::<WorkerRequest>(&encode(&SupervisorReply::Spawned { pid: 1 })).is_err());
    }

    #[test]
    fn fds_are_checked_by_kind_and_count() {
        let ns = |t: &str| -> OwnedFd {
            std::fs::File::open(format!("/proc/self/ns/{t}"))
                .unwrap()
                .into()
        };
        let rooms = |types: Vec<NsType>| WorkerReply::Rooms {
            id: 1,
            inodes: vec![0; types.len()],
            types,
        };
        // Counted only, a net namespace passes for uts; by kind it does not.
        assert!(rooms(vec![NsType::Uts]).fds_match(&[ns("net")], Trust::Counts));
        assert!(!rooms(vec![NsType::Uts]).fds_match(&[ns("net")], Trust::Kinds));
        assert!(rooms(vec![NsType::Uts]).fds_match(&[ns("uts")], Trust::Kinds));
        // No room is a user namespace, and no count is off, however trusted.
        assert!(!rooms(vec![NsType::User]).fds_match(&[ns("user")], Trust::Counts));
        assert!(!rooms(vec![NsType::Uts]).fds_match(&[], Trust::Counts));
        // A spawner's request: the parent user namespace, then a pidfd.
        let sub = |parent, caller| WorkerRequest::Subspace {
            id: 1,
            spaces: 0,
            uid: 1,
            gid: 1,
            parent,
            caller,
            maps: None,
        };
        let me = || fd::pidfd_open(std::process::id() as i32).unwrap();
        assert!(sub(true, true).fds_match(&[ns("user"), me()], Trust::Kinds));
        assert!(!sub(true, true).fds_match(&[me(), ns("user")], Trust::Kinds));
        assert!(!sub(true, false).fds_match(&[ns("net")], Trust::Kinds));
        assert!(sub(false, true).fds_match(&[me()], Trust::Kinds));
        assert!(!sub(false, false).fds_match(&[me()], Trust::Kinds));
        // take closes what it refuses and says why.
        let bytes = encode(&sub(false, true));
        assert_eq!(
            WorkerRequest::take(&bytes, vec![ns("net")], Trust::Kinds).unwrap_err(),
            InternalError::FdMismatch
        );
        assert_eq!(
            WorkerRequest::take(&bytes[..3], vec![], Trust::Kinds).unwrap_err(),
            InternalError::Malformed
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode::<WorkerRequest>(&bytes);
            let _ = decode::<WorkerReply>(&bytes);
            let _ = decode::<SupervisorRequest>(&bytes);
            let _ = decode::<SubspaceReady>(&bytes);
        }
    }
}
