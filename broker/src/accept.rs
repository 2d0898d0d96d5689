//! New connections: accepted, their peers identified by the kernel, the
//! connection caps applied, and each served on a task of its own.

use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use nix::sys::socket::{accept4, getsockopt, sockopt, SockFlag};
use spacer_proto::wire::{ErrorKind, Response};
use spacer_proto::Channel;
use tokio::io::unix::AsyncFdReadyGuard;

use crate::achan::AsyncChannel;
use crate::conn::{self, Backend};
use crate::ctx::Ctx;
use crate::peer::PeerInfo;
use crate::usage::{RefusalRecord, REFUSAL_INTERVAL};
use crate::{closer, peer, sys};

/// Accepts every connection waiting on the listening socket, which the
/// event loop found readable; `global_cap` is the broker's connection cap.
pub async fn accept_waiting(
    mut guard: AsyncFdReadyGuard<'_, OwnedFd>,
    ctx: &Rc<Ctx>,
    global_cap: u32,
) {
    loop {
        match accept4(
            guard.get_inner().as_fd(),
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        ) {
            Ok(fd) => accept(ctx, fd, global_cap),
            Err(nix::errno::Errno::EAGAIN) => {
                guard.clear_ready();
                return;
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(target: "spacer::event", event = "accept_failed", error = %e, "cannot accept");
                guard.clear_ready();
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
        }
    }
}

/// Identifies a new peer and starts serving it, or refuses it.
fn accept(ctx: &Rc<Ctx>, fd: OwnedFd, global_cap: u32) {
    let Ok(mut chan) = Channel::from_fd(fd) else {
        return;
    };
    if closer::refuse_fds(&mut chan).is_err() {
        return;
    }
    let Ok(cred) = chan.peer_credentials() else {
        return;
    };
    // Without its groups a peer could slip past a rule that matches one of
    // them: refused, never treated as having none.
    let groups = match sys::peer_groups(chan.as_fd()) {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(target: "spacer::event", event = "peer_refused", uid = cred.uid, error = %e, "cannot read the peer's groups (SO_PEERGROUPS); connection refused");
            return;
        }
    };
    let pidfd = match getsockopt(&chan, sockopt::PeerPidfd) {
        Ok(p) => Some(p),
        // ESRCH: the peer is already gone; never authorize it.
        Err(nix::errno::Errno::ESRCH) => return,
        Err(_) => None,
    };
    // Its name through the pidfd (never a bare pid, which may be another
    // process's by now); its user name off the event loop.
    let comm = pidfd.as_ref().and_then(|p| peer::comm_of(p.as_fd()));
    let peer = Rc::new(PeerInfo {
        uid: cred.uid,
        gid: cred.gid,
        groups,
        pid: cred.pid,
        pidfd,
        comm,
        user: Some(ctx.names.of(cred.uid)),
        tenant: ctx.tenants.tenant_of(cred.uid, cred.gid),
    });
    let cap = ctx.policy.borrow().connection_limit(&peer.policy_peer());
    let Ok(chan) = AsyncChannel::new(chan) else {
        return;
    };
    if let Err(reason) = ctx
        .counters
        .open_connection(peer.account(), cap, global_cap)
    {
        record_refusal(ctx, &peer, &reason);
        // Tell the client why (its first request reads this), then close.
        let msg = Response::error(ErrorKind::Denied, reason).encode();
        let _ = chan.get().send(&msg, &[]);
        return;
    }
    let ctx = ctx.clone();
    tokio::task::spawn_local(async move {
        let account = peer.account();
        conn::serve(ctx.clone(), chan, peer, &Backend::Pool).await;
        ctx.counters.close_connection(account);
        ctx.closed.notify_waiters();
    });
}

/// Writes a refused connection's audit record, or counts it into one
/// written when its uid's interval ends (see `usage::RefusalLog`).
fn record_refusal(ctx: &Rc<Ctx>, peer: &PeerInfo, reason: &str) {
    let flush_after = match ctx.counters.connection_refused(peer.account()) {
        RefusalRecord::Write => {
            tracing::info!(target: "spacer::audit", uid = peer.uid, gid = peer.gid, pid = peer.pid, tenant = peer.tenant.as_ref().map(|t| t.uid), decision = "deny", reason = %reason, "connection refused");
            return;
        }
        RefusalRecord::Hold { flush_after: None } => return,
        RefusalRecord::Hold {
            flush_after: Some(wait),
        } => wait,
    };
    // Counted per account: a tenant's subordinate ids share one budget.
    let (ctx, uid, reason) = (ctx.clone(), peer.account(), reason.to_owned());
    tokio::task::spawn_local(async move {
        // Written at once on stop, so that no count is lost.
        tokio::select! {
            _ = tokio::time::sleep(flush_after) => {}
            _ = ctx.stop.notified() => {}
        }
        let count = ctx.counters.take_held_refusals(uid);
        if count > 0 {
            tracing::info!(target: "spacer::audit", uid, decision = "deny", reason = %reason, count, interval_s = REFUSAL_INTERVAL.as_secs(), "connections refused");
        }
    });
}
