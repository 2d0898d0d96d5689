//! Step four: hand what was made to the client — rooms after the checks
//! an untrusted subspace worker's rooms need, a subspace after its
//! connection is set up and served — and commit the request's charge.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use spacer_proto::wire::Response;
use spacer_proto::{fd, Channel, NsType};

use crate::authorize::Grant;
use crate::closer;
use crate::conn::{Backend, Conn};
use crate::ctx::Ctx;
use crate::dispatch::{Made, NewSubspace};
use crate::record::AuditRecord;
use crate::subspace::{self, SubLinkParts};
use crate::usage::RoomId;

/// Why what was made was not handed out (it is closed, and the charge
/// given back). The texts are the reasons clients get.
#[derive(Debug, thiserror::Error)]
pub enum NotRelayed {
    /// A subspace worker returned rooms that fail the checks; the subspace
    /// is closed.
    #[error("{0}")]
    Misbehaved(String),
    /// The socketpair of a new subspace's `conn`.
    #[error("creating the subspace connection: {0}")]
    SubspaceConn(std::io::Error),
    /// Copies of the new subspace's pidfd and user namespace.
    #[error("keeping the subspace's fds: {0}")]
    KeepFds(std::io::Error),
    /// Serving the new subspace's `conn`.
    #[error("serving the subspace: {0}")]
    Serve(std::io::Error),
}

/// Relays what was made for `conn`'s request, recording the namespaces
/// handed out; returns whether the response reached the client.
pub async fn relay(
    ctx: &Rc<Ctx>,
    conn: &Conn<'_>,
    grant: Grant<'_>,
    made: Made,
    record: &mut AuditRecord,
) -> Result<bool, NotRelayed> {
    match made {
        Made::Rooms { types, inodes, fds } => {
            rooms(ctx, conn, grant, (types, inodes, fds), record).await
        }
        Made::Subspace(new) => new_subspace(ctx, conn, grant, new, record).await,
    }
}

async fn rooms(
    ctx: &Ctx,
    conn: &Conn<'_>,
    grant: Grant<'_>,
    (types, inodes, fds): (Vec<NsType>, Vec<u64>, Vec<OwnedFd>),
    record: &mut AuditRecord,
) -> Result<bool, NotRelayed> {
    // Each room's id and inode (its file handle), read once.
    let handles: Vec<Option<RoomId>> = fds
        .iter()
        .map(|f| fd::namespace_handle(f.as_fd()).ok())
        .collect();
    if let Backend::Subspace(link) = conn.backend {
        if let Err(reason) = link.check_rooms(ctx, &fds, &handles) {
            tracing::warn!(target: "spacer::event", event = "subspace_protocol_error", subspace = link.id, reason = %reason, "subspace worker misbehaved; closing it");
            closer::discard(fds);
            return Err(NotRelayed::Misbehaved(reason));
        }
    }
    // Counted against the uid until they are really gone.
    let made: Vec<(NsType, RoomId)> = types
        .iter()
        .zip(&handles)
        .filter_map(|(t, h)| Some((*t, (*h)?)))
        .collect();
    for ((t, h), ino) in types.iter().zip(&handles).zip(inodes) {
        // The host worker's word; a subspace worker's is not taken.
        let ino = match conn.backend {
            Backend::Pool => Some(ino),
            Backend::Subspace(_) => h.map(|(_, ino)| u64::from(ino)),
        };
        if let Some(ino) = ino {
            record.namespaces.insert(t.name(), ino);
        }
    }
    let has_mnt = types.contains(&NsType::Mnt);
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let delivered = conn
        .respond(ctx, &Response::Rooms { types }, &borrowed)
        .await;
    drop(borrowed);
    // A mount namespace is torn down in its last close, which is this one
    // if the client did not take it (or closed it at once): the larger the
    // caller's mount table, the longer. Closed off the event loop; the
    // other types are torn down by the kernel in the background.
    if has_mnt {
        closer::discard(fds);
    } else {
        drop(fds);
    }
    grant
        .charge
        .rooms_handed_out(if delivered { made } else { Vec::new() });
    Ok(delivered)
}

async fn new_subspace(
    ctx: &Rc<Ctx>,
    conn: &Conn<'_>,
    grant: Grant<'_>,
    new: NewSubspace,
    record: &mut AuditRecord,
) -> Result<bool, NotRelayed> {
    let NewSubspace {
        user,
        pid,
        worker_pid,
        worker_chan,
        pidfd,
        ns,
        started,
    } = new;
    for (t, f) in &ns {
        if let Ok(ino) = fd::namespace_inode(f.as_fd()) {
            record.namespaces.insert(t.name(), ino);
        }
    }
    let (client_end, broker_end) = Channel::pair().map_err(NotRelayed::SubspaceConn)?;
    // The user namespace the new worker serves in: its own, else its
    // parent's.
    let user_ns = match (ns.iter().find(|(t, _)| *t == NsType::User), conn.backend) {
        (Some((_, f)), _) => f.try_clone().map(Some),
        (None, Backend::Subspace(l)) => l.user_ns.as_ref().map(|f| f.try_clone()).transpose(),
        (None, Backend::Pool) => Ok(None),
    }
    .map_err(NotRelayed::KeepFds)?;
    let kept_pidfd = pidfd.try_clone().map_err(NotRelayed::KeepFds)?;
    let id = ctx.new_subspace_id();
    let parts = SubLinkParts {
        worker_chan,
        id,
        depth: conn.depth() + 1,
        pid: worker_pid,
        pidfd: kept_pidfd,
        user_ns,
    };
    // Until here a failure ends the worker (`started` dropped).
    subspace::start(ctx, conn.peer, broker_end, parts).map_err(NotRelayed::Serve)?;
    started.served();
    // From here the subspace task owns the live-subspace charge.
    grant.charge.into_subspace();
    let mut out: Vec<BorrowedFd<'_>> = vec![client_end.as_fd(), pidfd.as_fd()];
    out.extend(ns.iter().map(|(_, f)| f.as_fd()));
    let delivered = conn
        .respond(ctx, &Response::Subspace { user, pid }, &out)
        .await;
    drop(out);
    drop(client_end);
    record.new_subspace = Some(id);
    Ok(delivered)
}
