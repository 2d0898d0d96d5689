//! One client connection: read a request, decide, forward, relay, audit;
//! the next request is read only after this one is answered.
//!
//! A connection is either a client's own (depth 0, served by the worker
//! pool) or a *subspace connection*: the broker's end of a socketpair whose
//! other end it handed to the client as `conn`, served by one subspace
//! worker. A subspace connection acts as the peer that created the subspace
//! (the kernel's identity of the original connection), whoever holds it now.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use spacer_policy::{Decision as PolicyDecision, Op, Peer, Policy};
use spacer_proto::internal::{self, WorkerReply, WorkerRequest};
use spacer_proto::wire::{self, ErrorKind, Request, Response};
use spacer_proto::{
    check_spaces, fd, Channel, IdMaps, MapChoice, NsType, RecvError, RoomOptions, Spaces,
};
use tokio::sync::Notify;

use crate::achan::AsyncChannel;
use crate::audit::{self, Decision, SubspaceRef};
use crate::pool::{CallError, Pool};
use crate::subids;
use crate::usage::Counters;

/// Time limits of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A new connection must send its first request within this.
    pub first_request: Duration,
    /// A client connection idle this long is closed (subspace connections
    /// hold a subspace and are never closed for idleness).
    pub idle: Duration,
    /// A response the client does not take within this is dropped and the
    /// connection closed.
    pub write: Duration,
}

/// What all connections share.
pub struct Ctx {
    /// The policy in force; a reload swaps it, each request reads it once.
    pub policy: RefCell<Rc<Policy>>,
    /// The serving workers that make rooms.
    pub pool: Rc<Pool>,
    /// The worker that starts every subspace worker.
    pub spawner: Rc<Pool>,
    /// The inode of the broker's own user namespace: the host's, where a
    /// root PID-only subspace makes its rooms.
    pub host_user_ns: u64,
    /// Limits' counters.
    pub counters: Counters,
    /// Whether the audit log is writable.
    pub audit: audit::Health,
    /// Connection time limits.
    pub timeouts: Timeouts,
    /// Subspace ids.
    pub next_subspace: Cell<u64>,
    /// Live subspaces in all.
    pub max_subspaces: u32,
    /// Where the subordinate id files are.
    pub subids: subids::Files,
    /// Set on shutdown.
    pub stopping: Cell<bool>,
    /// Wakes connections on shutdown.
    pub stop: Notify,
    /// Woken each time a client connection closes.
    pub closed: Notify,
}

/// A peer, as the kernel identified it when it connected.
#[derive(Debug)]
pub struct PeerInfo {
    /// uid
    pub uid: u32,
    /// gid
    pub gid: u32,
    /// supplementary groups
    pub groups: Vec<u32>,
    /// pid at connect time (informational)
    pub pid: i32,
    /// `SO_PEERPIDFD`: the connecting process itself, immune to pid reuse.
    pub pidfd: Option<OwnedFd>,
}

impl PeerInfo {
    /// Whether the connecting process still runs: its pidfd polls readable
    /// once it has exited (zombies included). Without a pidfd (older
    /// kernels) this cannot be known and is assumed.
    pub fn alive(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        match &self.pidfd {
            Some(p) => {
                let mut pfd = [PollFd::new(p.as_fd(), PollFlags::POLLIN)];
                matches!(poll(&mut pfd, PollTimeout::ZERO), Ok(0))
            }
            None => true,
        }
    }
}

/// Where a connection's allowed requests go.
pub enum Backend {
    /// The pool of host workers.
    Pool,
    /// One subspace worker.
    Subspace(SubLink),
}

/// The broker's link to a subspace worker.
pub struct SubLink {
    chan: AsyncChannel,
    id: u64,
    depth: u32,
    pid: i32,
    next_id: Cell<u64>,
    /// The worker's pidfd: its slot is free once this says it has exited.
    pidfd: OwnedFd,
    /// The user namespace the worker serves in (its own, or its parent
    /// subspace's for a PID-only one; `None`: the host's). Held, so its
    /// inode cannot be reused while the subspace lives.
    user_ns: Option<OwnedFd>,
    /// Ids of the namespaces this worker handed out lately.
    seen: RefCell<Seen>,
}

/// The ids (see [`fd::namespace_handle`]) of the last [`Seen::CAP`] namespaces
/// a subspace worker handed out: one it hands out again is refused.
#[derive(Default)]
struct Seen {
    order: std::collections::VecDeque<u64>,
    set: std::collections::HashSet<u64>,
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
fn worker_text(reason: &str) -> String {
    let mut text: String = reason.chars().take(WORKER_REASON_MAX).collect();
    if text.len() < reason.len() {
        text.push('…');
    }
    format!("subspace worker says: {}", text.escape_debug())
}

impl SubLink {
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
    fn check_rooms(
        &self,
        ctx: &Ctx,
        fds: &[OwnedFd],
        handles: &[Option<crate::usage::RoomId>],
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
}

/// Serves one connection until it ends. `depth` is 0 for a client's own
/// connection.
pub async fn serve(ctx: Rc<Ctx>, chan: AsyncChannel, peer: Rc<PeerInfo>, backend: &Backend) {
    let (depth, sub_ref) = match backend {
        Backend::Pool => (0, None),
        Backend::Subspace(l) => (
            l.depth,
            Some(SubspaceRef {
                id: l.id,
                depth: l.depth,
            }),
        ),
    };
    let mut buf = vec![0u8; wire::MAX_REQUEST_BYTES];
    let mut first = true;
    loop {
        let wait = match (backend, first) {
            (Backend::Pool, true) => Some(ctx.timeouts.first_request),
            (Backend::Pool, false) => Some(ctx.timeouts.idle),
            (Backend::Subspace(_), _) => None,
        };
        let received = tokio::select! {
            r = with_timeout(wait, chan.recv(&mut buf, 0)) => r,
            _ = subspace_gone(backend) => break,
            _ = ctx.stop.notified() => break,
        };
        if ctx.stopping.get() {
            break;
        }
        first = false;
        // One unread response at most: the next request is handled once the
        // client has taken the last answer (and its fds). A client that
        // sends ahead without reading is answered in order, at its pace, so
        // it cannot pile fds up in flight on the broker's account.
        if !previous_taken(&ctx, &chan).await {
            break;
        }

        let t0 = Instant::now();
        let (bytes_len, sender) = match received {
            None => break, // idle or first-request deadline
            Some(Ok(Some(got))) => (got.len, got.sender),
            Some(Ok(None)) | Some(Err(RecvError::Io(_))) => break,
            Some(Err(e)) => {
                // Oversized, or with fds: answer, audit, and for a truncated
                // datagram also close (its framing cannot be trusted).
                let close = matches!(e, RecvError::Truncated { .. });
                let reason = match e {
                    RecvError::Truncated { max } => format!("request larger than {max} bytes"),
                    _ => "fds attached to a request".to_owned(),
                };
                refusal_pause(&ctx, peer.uid).await;
                let mut rec = record(&peer, sub_ref);
                rec.reason = Some(reason.clone());
                let delivered = respond(
                    &ctx,
                    &chan,
                    &Response::error(ErrorKind::Invalid, reason),
                    &[],
                )
                .await;
                finish(rec, t0, delivered);
                if close || !delivered {
                    break;
                }
                continue;
            }
        };
        // On a subspace's conn, which a client passes on (`SPACER_FD`), the
        // process that sent this request, if it is the conn's uid: nested
        // subspaces are made from its namespaces.
        let requester = sender.filter(|s| s.uid == peer.uid).and_then(|s| s.pidfd);
        let keep = handle(
            &ctx,
            &chan,
            &peer,
            backend,
            depth,
            sub_ref,
            &buf[..bytes_len],
            (t0, requester),
        )
        .await;
        if !keep {
            break;
        }
    }
}

/// Waits until the client has read everything sent to it (true), or has
/// closed its end (false). No deadline: fds queued to a client count
/// against the broker's own limit in the kernel until that client reads or
/// closes, so a connection with unread answers stays open — and counted
/// against its uid's connection cap — rather than being dropped with its
/// fds still in flight.
async fn previous_taken(ctx: &Ctx, chan: &AsyncChannel) -> bool {
    let mut pause = Duration::from_micros(200);
    loop {
        match crate::sys::unread_by_peer(chan.as_fd()) {
            Ok(0) | Err(_) => return true,
            Ok(_) if chan.peer_closed() || ctx.stopping.get() => return false,
            Ok(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

async fn with_timeout<F: std::future::Future>(d: Option<Duration>, f: F) -> Option<F::Output> {
    match d {
        Some(d) => tokio::time::timeout(d, f).await.ok(),
        None => Some(f.await),
    }
}

/// Resolves when a subspace worker's channel shows end of stream (or an
/// unsolicited datagram, which only a misbehaving worker sends); never for
/// the pool.
async fn subspace_gone(backend: &Backend) {
    match backend {
        Backend::Pool => std::future::pending().await,
        Backend::Subspace(l) => loop {
            if l.chan.readable().await.is_err() || l.chan.peer_closed() {
                return;
            }
            let mut buf = [0u8; 64];
            match l.chan.recv(&mut buf, 0).await {
                Err(e) if e.is_would_block() => continue,
                _ => {
                    tracing::warn!(target: "spacer::event", event = "subspace_protocol_error", subspace = l.id, "subspace worker sent an unsolicited message; closing it");
                    return;
                }
            }
        },
    }
}

fn record(peer: &PeerInfo, sub_ref: Option<SubspaceRef>) -> Decision {
    Decision {
        uid: peer.uid,
        gid: peer.gid,
        groups: peer.groups.clone(),
        pid: peer.pid,
        pidfd: peer.pidfd.is_some(),
        request: "unknown",
        spaces: Vec::new(),
        decision: "error",
        rule: None,
        rule_name: None,
        reason: None,
        namespaces: BTreeMap::new(),
        options: None,
        subspace: sub_ref,
        map: None,
        uid_map: None,
        gid_map: None,
        new_subspace: None,
        delivered: false,
        duration_us: 0,
    }
}

fn finish(mut rec: Decision, t0: Instant, delivered: bool) {
    rec.delivered = delivered;
    rec.duration_us = t0.elapsed().as_micros() as u64;
    rec.emit();
}

/// A refused request is answered late once its uid has spent its refusal
/// budget (see [`crate::usage::Counters::refused`]).
async fn refusal_pause(ctx: &Ctx, uid: u32) {
    let wait = ctx.counters.refused(uid);
    if !wait.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.stop.notified() => {}
        }
    }
}

/// Sends a response within the write deadline; false if it did not reach
/// the client's socket.
async fn respond(ctx: &Ctx, chan: &AsyncChannel, resp: &Response, fds: &[BorrowedFd<'_>]) -> bool {
    matches!(
        tokio::time::timeout(ctx.timeouts.write, chan.send(&resp.encode(), fds)).await,
        Ok(Ok(()))
    )
}

/// Answers one request. Returns whether to keep the connection.
#[allow(clippy::too_many_arguments)]
async fn handle(
    ctx: &Rc<Ctx>,
    chan: &AsyncChannel,
    peer: &Rc<PeerInfo>,
    backend: &Backend,
    depth: u32,
    sub_ref: Option<SubspaceRef>,
    bytes: &[u8],
    (t0, requester): (Instant, Option<OwnedFd>),
) -> bool {
    let mut rec = record(peer, sub_ref);
    let fail = |mut rec: Decision, kind: ErrorKind, reason: String| async move {
        if matches!(kind, ErrorKind::Denied | ErrorKind::Invalid) {
            refusal_pause(ctx, peer.uid).await;
        }
        rec.reason = Some(reason.clone());
        let delivered = respond(ctx, chan, &Response::error(kind, reason), &[]).await;
        finish(rec, t0, delivered);
        delivered
    };
    let req = match Request::decode(bytes) {
        Ok(r) => r,
        Err(e) => return fail(rec, ErrorKind::Invalid, e.to_string()).await,
    };
    rec.request = req.op();
    rec.spaces = Spaces::from_bits_truncate(req.spaces()).names();
    let raw_spaces = req.spaces();
    let (op, valid, options, map) = match req {
        Request::Rooms { options, .. } => (Op::Rooms, Spaces::ROOMS, options, MapChoice::Root),
        Request::Subspace { map, .. } => {
            (Op::Subspace, Spaces::SUBSPACE, RoomOptions::default(), map)
        }
    };
    // Recorded before anything is checked: a refused request is audited
    // with everything it asked for.
    rec.options = audit::options(&options);
    rec.map = (map != MapChoice::Root).then_some(map.name());
    let spaces = match check_spaces(raw_spaces, valid) {
        Ok(s) => s,
        Err(e) => return fail(rec, ErrorKind::Invalid, e.to_string()).await,
    };
    if map != MapChoice::Root && !spaces.contains(Spaces::USER) {
        let reason = "map is for a new user namespace: ask for user".to_owned();
        return fail(rec, ErrorKind::Invalid, reason).await;
    }
    if map != MapChoice::Root && depth > 0 {
        let reason =
            "map is for first-level subspaces only (a nested one maps its parent's ids)".to_owned();
        return fail(rec, ErrorKind::Invalid, reason).await;
    }
    if let Err(e) = options.check(spaces) {
        return fail(rec, ErrorKind::Invalid, e.to_string()).await;
    }
    if !peer.alive() {
        rec.decision = "deny";
        return fail(
            rec,
            ErrorKind::Denied,
            "the connecting process has exited".into(),
        )
        .await;
    }
    // One snapshot of the policy for the whole request.
    let policy = ctx.policy.borrow().clone();
    let peer_view = Peer {
        uid: peer.uid,
        gid: peer.gid,
        groups: &peer.groups,
    };
    // At its live-room cap, a uid's rooms are checked first: those that are
    // gone no longer count. (The last await before deciding and charging.)
    if op == Op::Rooms {
        if let Some(max) = policy.matching(&peer_view).1.limits.max_rooms {
            let usage = ctx.counters.usage(peer.uid, depth);
            for t in spaces.types().filter(|&t| usage.live_rooms_of(t) >= max) {
                forget_gone_rooms(ctx, peer.uid, t).await;
            }
        }
    }
    // Subordinate ids: only where the policy grants them and the request
    // would pass anyway; the files are read off the event loop (a name
    // lookup may be slow). Decided again below, after this wait, before
    // anything is charged.
    let maps = match map {
        MapChoice::Root => None,
        MapChoice::Current => Some(IdMaps::single(peer.uid, peer.uid, peer.gid, peer.gid)),
        MapChoice::Auto => {
            let usage = ctx.counters.usage(peer.uid, depth);
            let early = match policy.decide(&peer_view, op, spaces, &[], &usage) {
                PolicyDecision::Deny { rule, reason } => Some((rule, reason)),
                PolicyDecision::Allow { rule } => match policy.check_subids(&peer_view) {
                    Err(reason) => Some((rule, reason)),
                    Ok(()) if peer.uid == 0 => {
                        Some((rule, "uid 0 has no subordinate ids to map".to_owned()))
                    }
                    Ok(()) => None,
                },
            };
            if let Some((rule, reason)) = early {
                rec.rule = Some(rule.id());
                rec.rule_name = rule.name().map(str::to_owned);
                rec.decision = "deny";
                return fail(rec, ErrorKind::Denied, reason).await;
            }
            let (files, uid, gid) = (ctx.subids.clone(), peer.uid, peer.gid);
            match tokio::task::spawn_blocking(move || subids::auto_maps(&files, uid, gid)).await {
                Ok(Ok(m)) => Some(m),
                Ok(Err(e)) => {
                    rec.decision = "deny";
                    return fail(rec, ErrorKind::Denied, e.to_string()).await;
                }
                Err(_) => {
                    let reason = "looking up subordinate ids failed".to_owned();
                    return fail(rec, ErrorKind::Failed, reason).await;
                }
            }
        }
    };
    if let Some(m) = &maps {
        rec.uid_map = Some(IdMaps::summary(&m.uid));
        rec.gid_map = Some(IdMaps::summary(&m.gid));
    }
    let usage = ctx.counters.usage(peer.uid, depth);
    let decision = policy.decide(&peer_view, op, spaces, &options.used(), &usage);
    let rule = match &decision {
        PolicyDecision::Allow { rule } | PolicyDecision::Deny { rule, .. } => *rule,
    };
    rec.rule = Some(rule.id());
    rec.rule_name = rule.name().map(str::to_owned);
    if let PolicyDecision::Deny { reason, .. } = decision {
        rec.decision = "deny";
        return fail(rec, ErrorKind::Denied, reason).await;
    }
    if op == Op::Subspace && ctx.counters.total_subspaces() >= ctx.max_subspaces {
        rec.decision = "deny";
        let reason = format!(
            "the broker's subspace limit {} is reached",
            ctx.max_subspaces
        );
        return fail(rec, ErrorKind::Denied, reason).await;
    }
    // Authorized: charge now (no await since deciding), refund on failure.
    let rooms = if op == Op::Rooms {
        spaces
    } else {
        Spaces::empty()
    };
    let charge = ctx.counters.charge(peer.uid, op == Op::Subspace, rooms);
    if !ctx.audit.ok() {
        ctx.counters.refund(charge);
        return fail(
            rec,
            ErrorKind::Unavailable,
            "service unavailable: the audit log cannot be written".into(),
        )
        .await;
    }
    // Every subspace, at any depth, is started by the spawner; a nested one
    // in the user namespace its parent subspace serves in.
    let parent = match backend {
        Backend::Subspace(link) => link.user_ns.as_ref().map(|ns| ns.as_fd()),
        Backend::Pool => None,
    };
    // New mount and UTS namespaces copy the requesting process's: the room
    // worker gets its pidfd (the kernel's, taken at connect; on a
    // subspace's conn, of the process that sent the request). A subspace
    // worker lives in them and its PID namespace hangs below the
    // requester's: the spawner gets it too.
    let requester = requester.as_ref().or(peer.pidfd.as_ref());
    let caller = match (op, backend) {
        (Op::Rooms, Backend::Pool) if spaces.intersects(Spaces::MNT | Spaces::UTS) => {
            requester.map(|p| p.as_fd())
        }
        (Op::Subspace, _) => requester.map(|p| p.as_fd()),
        _ => None,
    };
    let request = |id| match op {
        Op::Rooms => WorkerRequest::Rooms {
            id,
            spaces: spaces.bits(),
            options: options.clone(),
            uid: peer.uid,
            caller: caller.is_some(),
        },
        Op::Subspace => WorkerRequest::Subspace {
            id,
            spaces: spaces.bits(),
            uid: peer.uid,
            gid: peer.gid,
            parent: parent.is_some(),
            caller: caller.is_some(),
            maps: maps.clone(),
        },
    };
    let result = match (op, backend) {
        (Op::Subspace, _) => {
            let fds: Vec<BorrowedFd<'_>> = parent.into_iter().chain(caller).collect();
            ctx.spawner.call(peer.uid, request, &fds).await
        }
        (Op::Rooms, Backend::Pool) => {
            let fds: Vec<BorrowedFd<'_>> = caller.into_iter().collect();
            ctx.pool.call(peer.uid, request, &fds).await
        }
        (Op::Rooms, Backend::Subspace(link)) => link.call(request, ctx.pool_timeout()).await,
    };
    let (reply, fds) = match result {
        Ok(r) => r,
        Err(e) => {
            ctx.counters.refund(charge);
            let kind = match e {
                CallError::Unavailable(_) => ErrorKind::Unavailable,
                _ => ErrorKind::Failed,
            };
            let delivered = fail(rec, kind, e.to_string()).await;
            // A subspace worker that died or hung ends its subspace.
            return delivered && matches!(backend, Backend::Pool);
        }
    };
    match reply {
        WorkerReply::Rooms { types, inodes, .. } => {
            if Spaces::of(types.iter().copied()) != spaces {
                ctx.counters.refund(charge);
                return fail(
                    rec,
                    ErrorKind::Failed,
                    "the worker made other namespaces than asked".into(),
                )
                .await;
            }
            // Each room's id and inode (its file handle), read once.
            let handles: Vec<Option<crate::usage::RoomId>> = fds
                .iter()
                .map(|f| fd::namespace_handle(f.as_fd()).ok())
                .collect();
            if let Backend::Subspace(link) = backend {
                if let Err(reason) = link.check_rooms(ctx, &fds, &handles) {
                    ctx.counters.refund(charge);
                    tracing::warn!(target: "spacer::event", event = "subspace_protocol_error", subspace = link.id, reason = %reason, "subspace worker misbehaved; closing it");
                    drop(fds);
                    fail(rec, ErrorKind::Failed, reason).await;
                    return false;
                }
            }
            // Counted against the uid until they are really gone.
            let made: Vec<(NsType, crate::usage::RoomId)> = types
                .iter()
                .zip(&handles)
                .filter_map(|(t, h)| Some((*t, (*h)?)))
                .collect();
            for ((t, h), ino) in types.iter().zip(&handles).zip(inodes) {
                // The host worker's word; a subspace worker's is not taken.
                let ino = match backend {
                    Backend::Pool => Some(ino),
                    Backend::Subspace(_) => h.map(|(_, ino)| u64::from(ino)),
                };
                if let Some(ino) = ino {
                    rec.namespaces.insert(t.name(), ino);
                }
            }
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            let delivered = respond(ctx, chan, &Response::Rooms { types }, &borrowed).await;
            drop(borrowed);
            drop(fds);
            ctx.counters
                .rooms_made(&charge, if delivered { made } else { Vec::new() });
            rec.decision = "allow";
            if !delivered {
                rec.reason = Some("undelivered: the client did not take the response".into());
            }
            finish(rec, t0, delivered);
            delivered
        }
        WorkerReply::Subspace {
            user,
            pid,
            worker_pid,
            ..
        } => {
            let mut fds = fds.into_iter();
            let (Some(sub_chan), Some(pidfd)) = (fds.next(), fds.next()) else {
                ctx.counters.refund(charge);
                return fail(rec, ErrorKind::Failed, "malformed subspace reply".into()).await;
            };
            let ns: Vec<(NsType, OwnedFd)> = [(user, NsType::User), (pid, NsType::Pid)]
                .into_iter()
                .filter(|(w, _)| *w)
                .map(|(_, t)| t)
                .zip(fds)
                .collect();
            for (t, f) in &ns {
                if let Ok(ino) = fd::namespace_inode(f.as_fd()) {
                    rec.namespaces.insert(t.name(), ino);
                }
            }
            let (client_end, broker_end) = match Channel::pair() {
                Ok(p) => p,
                Err(e) => {
                    ctx.counters.refund(charge);
                    return fail(
                        rec,
                        ErrorKind::Failed,
                        format!("creating the subspace connection: {e}"),
                    )
                    .await;
                }
            };
            // The user namespace the new worker serves in: its own, else its
            // parent's.
            let user_ns = match (ns.iter().find(|(t, _)| *t == NsType::User), backend) {
                (Some((_, f)), _) => f.try_clone().map(Some),
                (None, Backend::Subspace(l)) => {
                    l.user_ns.as_ref().map(|f| f.try_clone()).transpose()
                }
                (None, Backend::Pool) => Ok(None),
            };
            let kept = user_ns.and_then(|u| Ok((u, pidfd.try_clone()?)));
            let (user_ns, kept_pidfd) = match kept {
                Ok(k) => k,
                Err(e) => {
                    ctx.counters.refund(charge);
                    return fail(
                        rec,
                        ErrorKind::Failed,
                        format!("keeping the subspace's fds: {e}"),
                    )
                    .await;
                }
            };
            let id = ctx.next_subspace.get();
            ctx.next_subspace.set(id + 1);
            let link = SubLinkParts {
                worker_chan: sub_chan,
                id,
                depth: depth + 1,
                pid: worker_pid,
                pidfd: kept_pidfd,
                user_ns,
            };
            let started = start_subspace(ctx, peer, broker_end, link);
            if let Err(e) = started {
                ctx.counters.refund(charge);
                return fail(rec, ErrorKind::Failed, format!("serving the subspace: {e}")).await;
            }
            // From here the subspace task owns the live-subspace charge.
            let mut out: Vec<BorrowedFd<'_>> = vec![client_end.as_fd(), pidfd.as_fd()];
            out.extend(ns.iter().map(|(_, f)| f.as_fd()));
            let delivered = respond(ctx, chan, &Response::Subspace { user, pid }, &out).await;
            drop(out);
            drop(client_end);
            rec.decision = "allow";
            rec.new_subspace = Some(id);
            if !delivered {
                rec.reason = Some("undelivered: the client did not take the response".into());
            }
            finish(rec, t0, delivered);
            delivered
        }
        WorkerReply::Invalid { reason, .. } => {
            ctx.counters.refund(charge);
            fail(rec, ErrorKind::Invalid, reason_from(backend, op, reason)).await
        }
        WorkerReply::Failed { reason, .. } => {
            ctx.counters.refund(charge);
            fail(rec, ErrorKind::Failed, reason_from(backend, op, reason)).await
        }
        WorkerReply::Ended { .. } | WorkerReply::Alive { .. } => {
            ctx.counters.refund(charge);
            fail(
                rec,
                ErrorKind::Failed,
                "the worker answered another request".into(),
            )
            .await
        }
    }
}

/// Asks a room worker which of `uid`'s rooms of type `t` still exist, and
/// forgets the others. Errors leave the count as it was.
async fn forget_gone_rooms(ctx: &Rc<Ctx>, uid: u32, t: NsType) {
    let rooms = ctx.counters.rooms_of(uid, t);
    for chunk in rooms.chunks(internal::MAX_ALIVE) {
        let ask = |id| WorkerRequest::Alive {
            id,
            nstype: t,
            rooms: chunk.to_vec(),
        };
        if let Ok((WorkerReply::Alive { alive, .. }, _)) = ctx.pool.call(uid, ask, &[]).await {
            if alive.len() == chunk.len() {
                let gone: Vec<_> = chunk
                    .iter()
                    .zip(alive)
                    .filter(|(_, a)| !a)
                    .map(|(r, _)| *r)
                    .collect();
                ctx.counters.rooms_gone(uid, t, &gone);
            }
        }
    }
}

/// How often every uid's rooms are checked, so that the record of rooms
/// long gone does not grow.
const ROOM_SWEEP: Duration = Duration::from_secs(30);

/// Runs for the life of the broker: every [`ROOM_SWEEP`], forgets the
/// rooms that are gone.
pub async fn sweep_rooms(ctx: Rc<Ctx>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ROOM_SWEEP) => {}
            _ = ctx.stop.notified() => return,
        }
        for (uid, t) in ctx.counters.rooms_held() {
            forget_gone_rooms(&ctx, uid, t).await;
        }
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

/// What a new [`SubLink`] is made of.
struct SubLinkParts {
    worker_chan: OwnedFd,
    id: u64,
    depth: u32,
    pid: i32,
    pidfd: OwnedFd,
    user_ns: Option<OwnedFd>,
}

impl Ctx {
    fn pool_timeout(&self) -> Duration {
        self.pool.timeout()
    }
}

/// Starts serving a new subspace on `broker_end`, linked to its worker.
/// When the connection ends, the spawner kills the worker (whatever the
/// tenant did to it: stopped, traced, hung), and the uid's slot is freed
/// once the process is really gone.
fn start_subspace(
    ctx: &Rc<Ctx>,
    peer: &Rc<PeerInfo>,
    broker_end: Channel,
    parts: SubLinkParts,
) -> std::io::Result<()> {
    let mut broker_end = broker_end;
    broker_end.tell_senders()?;
    let conn = AsyncChannel::new(broker_end)?;
    let link = SubLink {
        chan: AsyncChannel::new(Channel::from_fd(parts.worker_chan)?)?,
        id: parts.id,
        depth: parts.depth,
        pid: parts.pid,
        next_id: Cell::new(1),
        pidfd: parts.pidfd,
        user_ns: parts.user_ns,
        seen: RefCell::new(Seen::default()),
    };
    let (id, depth, pid) = (link.id, link.depth, link.pid);
    tracing::info!(target: "spacer::event", event = "subspace_opened", subspace = id, depth, pid, uid = peer.uid, "subspace opened");
    let ctx = ctx.clone();
    let peer = peer.clone();
    tokio::task::spawn_local(async move {
        let uid = peer.uid;
        let backend = Backend::Subspace(link);
        serve(ctx.clone(), conn, peer, &backend).await;
        let Backend::Subspace(link) = backend else {
            unreachable!("a subspace backend")
        };
        end_subspace(&ctx, uid, link).await;
        ctx.counters.subspace_closed(uid);
        tracing::info!(target: "spacer::event", event = "subspace_closed", subspace = id, pid, uid, "subspace closed");
    });
    Ok(())
}

/// Ends a subspace whose connection has closed: its channel closes, the
/// spawner kills its worker, and this returns once the process is gone.
async fn end_subspace(ctx: &Rc<Ctx>, uid: u32, link: SubLink) {
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

impl SubLink {
    /// One request to the subspace worker (at most one is in flight: its
    /// connection waits for the answer).
    async fn call(
        &self,
        request: impl FnOnce(u64) -> WorkerRequest,
        timeout: Duration,
    ) -> Result<(WorkerReply, Vec<OwnedFd>), CallError> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let req = request(id);
        self.chan
            .send(&internal::encode(&req), &[])
            .await
            .map_err(|_| CallError::Died)?;
        let mut buf = vec![0u8; internal::MAX_BYTES];
        let got = tokio::time::timeout(timeout, self.chan.recv(&mut buf, internal::MAX_FDS))
            .await
            .map_err(|_| CallError::Timeout(timeout))?
            .map_err(|_| CallError::Died)?
            .ok_or(CallError::Died)?;
        // A subspace worker runs as the requester: believe nothing unchecked.
        let reply: WorkerReply = internal::decode(&buf[..got.len]).map_err(|_| CallError::Died)?;
        if reply.id() != id || reply.check_fds(&got.fds).is_err() {
            return Err(CallError::Died);
        }
        Ok((reply, got.fds))
    }
}
