//! The broker's side of a subspace: the link to its (untrusted) worker,
//! the checks on what that worker returns, and the subspace's life: served
//! like a client connection bound to that worker, ended with its `conn`.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use spacer_proto::internal::{InternalError, Trust, WorkerReply, WorkerRequest};
use spacer_proto::{fd, Channel, MessageError};

use crate::achan::AsyncChannel;
use crate::closer;
use crate::conn::{self, Backend};
use crate::ctx::Ctx;
use crate::peer::PeerInfo;
use crate::pool::CallError;
use crate::record::SubspaceRef;
use crate::usage::RoomId;

/// The broker's link to a subspace worker.
pub struct SubLink {
    chan: AsyncChannel,
    /// Broker-wide id.
    pub id: u64,
    /// 1 for a subspace of the host, 2 inside that, ...
    pub depth: u32,
    pid: i32,
    next_id: Cell<u64>,
    /// The worker's pidfd: its slot is free once this says it has exited.
    pidfd: OwnedFd,
    /// The user namespace the worker serves in (its own, or its parent
    /// subspace's for a PID-only one; `None`: the host's). Held, so its
    /// inode cannot be reused while the subspace lives.
    pub user_ns: Option<OwnedFd>,
    /// Ids of the namespaces this worker handed out lately.
    seen: RefCell<Seen>,
}

/// The ids (see [`fd::namespace_handle`]) of the last [`Seen::CAP`] namespaces
/// a subspace worker handed out: one it hands out again is refused.
#[derive(Default)]
struct Seen {
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl Seen {
    const CAP: usize = 4096;

    /// Records `id`; false if it was there already.
    fn insert(&mut self, id: u64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > Self::CAP {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// The longest reason text of a subspace worker passed on (the rest is cut).
const WORKER_REASON_MAX: usize = 200;

/// A subspace worker's own words, as the client and the audit log see
/// them: marked as the worker's, bounded, and escaped.
pub fn worker_text(reason: &str) -> String {
    let mut text: String = reason.chars().take(WORKER_REASON_MAX).collect();
    if text.len() < reason.len() {
        text.push('…');
    }
    format!("subspace worker says: {}", text.escape_debug())
}

impl SubLink {
    /// How the audit log names this subspace.
    pub fn audit_ref(&self) -> SubspaceRef {
        SubspaceRef {
            id: self.id,
            depth: self.depth,
        }
    }

    /// The inode of the user namespace this worker's rooms must belong to.
    fn owner_inode(&self, ctx: &Ctx) -> Option<u64> {
        match &self.user_ns {
            Some(ns) => fd::namespace_inode(ns.as_fd()).ok(),
            None => Some(ctx.host_user_ns),
        }
    }

    /// Checks room fds this (untrusted) worker returned, with their file
    /// handles' parts: each new, never handed out before, and owned by the
    /// user namespace it serves in.
    pub fn check_rooms(
        &self,
        ctx: &Ctx,
        fds: &[OwnedFd],
        handles: &[Option<RoomId>],
    ) -> Result<(), String> {
        let want = self
            .owner_inode(ctx)
            .ok_or("cannot read the subspace's user namespace")?;
        let mut ids = Vec::with_capacity(fds.len());
        for (f, handle) in fds.iter().zip(handles) {
            let owner = fd::owning_user_namespace(f.as_fd())
                .and_then(|o| fd::namespace_inode(o.as_fd()))
                .map_err(|e| format!("reading the owner of a namespace it returned: {e}"))?;
            if owner != want {
                return Err(
                    "the subspace worker returned a namespace that is not its subspace's".into(),
                );
            }
            let (id, _) = handle.ok_or("cannot read the id of a namespace it returned")?;
            if ids.contains(&id) {
                return Err("the subspace worker returned one namespace twice".into());
            }
            ids.push(id);
        }
        let mut seen = self.seen.borrow_mut();
        if ids.iter().any(|id| seen.set.contains(id)) {
            return Err("the subspace worker returned a namespace it had handed out before".into());
        }
        for id in ids {
            seen.insert(id);
        }
        Ok(())
    }

    /// One request to the subspace worker (at most one is in flight: its
    /// connection waits for the answer).
    pub async fn call(
        &self,
        request: impl FnOnce(u64) -> WorkerRequest,
        timeout: Duration,
    ) -> Result<(WorkerReply, Vec<OwnedFd>), CallError> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let req = request(id);
        self.chan
            .send_msg(&req, &[])
            .await
            .map_err(|_| CallError::Died)?;
        let mut buf = vec![0u8; spacer_proto::internal::MAX_BYTES];
        let reply = self.chan.recv_msg::<WorkerReply>(&mut buf, Trust::Kinds);
        let got = tokio::time::timeout(timeout, reply)
            .await
            .map_err(|_| CallError::Timeout(timeout))?;
        // A subspace worker runs as the requester: believe nothing unchecked.
        let broken = |what: &'static str| {
            tracing::warn!(target: "spacer::event", event = "subspace_protocol_error", subspace = self.id, reason = what, "subspace worker misbehaved; closing it");
            CallError::Protocol(what)
        };
        let (reply, fds) = match got {
            Ok(Some(got)) => got,
            Ok(None) | Err(MessageError::Recv(_)) => return Err(CallError::Died),
            Err(MessageError::Message(InternalError::FdMismatch)) => {
                return Err(broken("fds that do not match its reply"))
            }
            Err(_) => return Err(broken("a malformed reply")),
        };
        if reply.id() != id {
            return Err(broken("a reply to another request"));
        }
        Ok((reply, fds))
    }

    /// Resolves when the worker's channel shows end of stream (or an
    /// unsolicited datagram, which only a misbehaving worker sends).
    pub async fn gone(&self) {
        loop {
            if self.chan.readable().await.is_err() || self.chan.peer_closed() {
                return;
            }
            let mut buf = [0u8; 64];
            match self.chan.recv(&mut buf, 0).await {
                Err(e) if e.is_would_block() => continue,
                _ => {
                    tracing::warn!(target: "spacer::event", event = "subspace_protocol_error", subspace = self.id, "subspace worker sent an unsolicited message; closing it");
                    return;
                }
            }
        }
    }
}

/// What a new [`SubLink`] is made of.
pub struct SubLinkParts {
    /// The broker's end of the worker's channel.
    pub worker_chan: OwnedFd,
    /// Broker-wide id.
    pub id: u64,
    /// Nesting depth (1 for a subspace of the host).
    pub depth: u32,
    /// The worker's pid (for logs).
    pub pid: i32,
    /// The worker's pidfd.
    pub pidfd: OwnedFd,
    /// The user namespace it serves in (`None`: the host's).
    pub user_ns: Option<OwnedFd>,
}

/// Starts serving a new subspace on `broker_end`, linked to its worker.
/// When the connection ends, the spawner kills the worker (whatever the
/// tenant did to it: stopped, traced, hung), and the uid's slot is freed
/// once the process is really gone.
pub fn start(
    ctx: &Rc<Ctx>,
    peer: &Rc<PeerInfo>,
    broker_end: Channel,
    parts: SubLinkParts,
) -> std::io::Result<()> {
    let mut broker_end = broker_end;
    broker_end.tell_senders()?;
    closer::refuse_fds(&mut broker_end)?;
    let conn = AsyncChannel::new(broker_end)?;
    // The worker runs as the tenant: what it sends that the broker does
    // not keep is closed off the event loop.
    let mut worker_chan = Channel::from_fd(parts.worker_chan)?;
    worker_chan.discard_fds(closer::discard);
    let link = SubLink {
        chan: AsyncChannel::new(worker_chan)?,
        id: parts.id,
        depth: parts.depth,
        pid: parts.pid,
        next_id: Cell::new(1),
        pidfd: parts.pidfd,
        user_ns: parts.user_ns,
        seen: RefCell::new(Seen::default()),
    };
    let (id, depth, pid) = (link.id, link.depth, link.pid);
    tracing::info!(target: "spacer::event", event = "subspace_opened", subspace = id, depth, pid, uid = peer.uid, tenant = peer.tenant.as_ref().map(|t| t.uid), "subspace opened");
    let ctx = ctx.clone();
    let peer = peer.clone();
    tokio::task::spawn_local(async move {
        let (uid, account) = (peer.uid, peer.account());
        let backend = Backend::Subspace(link);
        conn::serve(ctx.clone(), conn, peer, &backend).await;
        if let Backend::Subspace(link) = backend {
            end(&ctx, account, link).await;
        }
        ctx.counters.subspace_closed(account);
        tracing::info!(target: "spacer::event", event = "subspace_closed", subspace = id, pid, uid, "subspace closed");
    });
    Ok(())
}

/// A subspace worker the spawner started that no subspace task serves yet.
/// Made with the spawner's reply, it travels with it; wherever it is
/// dropped before [`Unserved::served`] (the reply came after the request
/// gave up, or could not be relayed), the spawner ends the worker, whatever
/// state the requester put it in: it runs as the requester, who could stop
/// it and keep an uncharged process.
pub struct Unserved {
    spawner: Rc<crate::pool::Pool>,
    pid: Option<i32>,
    /// Whose request it was (the spawner's queue it waits in).
    pub uid: u32,
}

impl Unserved {
    /// The worker `pid` the spawner just reported started.
    pub fn new(spawner: Rc<crate::pool::Pool>, pid: i32) -> Unserved {
        Unserved {
            spawner,
            pid: Some(pid),
            uid: 0,
        }
    }

    /// Its subspace task owns it now (and ends it with its `conn`).
    pub fn served(mut self) {
        self.pid = None;
    }
}

impl Drop for Unserved {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let (spawner, uid) = (self.spawner.clone(), self.uid);
            tokio::task::spawn_local(async move {
                let _ = spawner
                    .call(uid, |id| WorkerRequest::End { id, pid }, &[])
                    .await;
            });
        }
    }
}

/// Ends a subspace whose connection has closed: its channel closes, the
/// spawner kills its worker, and this returns once the process is gone.
async fn end(ctx: &Rc<Ctx>, uid: u32, link: SubLink) {
    let SubLink {
        chan, pidfd, pid, ..
    } = link;
    drop(chan);
    let _ = ctx
        .spawner
        .call(uid, |id| WorkerRequest::End { id, pid }, &[])
        .await;
    // A pidfd polls readable once its process has exited.
    match crate::sys::register_fd(pidfd) {
        Ok(watch) => {
            let _ = watch.readable().await;
        }
        Err(e) => {
            tracing::warn!(target: "spacer::event", event = "subspace_watch_failed", pid, error = %e, "cannot watch a subspace worker; freeing its slot now");
        }
    }
}
