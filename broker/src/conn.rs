//! One connection: read a request, answer it, and only then read the next.
//!
//! A connection is either a client's own (depth 0, served by the worker
//! pool) or a *subspace connection*: the broker's end of a socketpair whose
//! other end it handed to the client as `conn`, served by one subspace
//! worker. A subspace connection acts as the peer that created the subspace
//! (the kernel's identity of the original connection), whoever holds it now.
//! Each request goes through [`crate::pipeline`].

use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use spacer_proto::wire::{self, ErrorKind, Response};
use spacer_proto::RecvError;

use crate::achan::AsyncChannel;
use crate::ctx::Ctx;
use crate::peer::PeerInfo;
use crate::pipeline;
use crate::record::{AuditRecord, Outcome, SubspaceRef};
use crate::subspace::SubLink;

/// Where a connection's allowed requests go.
pub enum Backend {
    /// The pool of host workers.
    Pool,
    /// One subspace worker.
    Subspace(SubLink),
}

/// A connection being served: its channel, its peer, and where its
/// requests go.
pub struct Conn<'a> {
    /// The client's (or the subspace's `conn`'s) channel.
    pub chan: &'a AsyncChannel,
    /// Who it acts as.
    pub peer: &'a Rc<PeerInfo>,
    /// Where its allowed requests go.
    pub backend: &'a Backend,
}

impl Conn<'_> {
    /// 0 for a client's own connection, else its subspace's depth.
    pub fn depth(&self) -> u32 {
        match self.backend {
            Backend::Pool => 0,
            Backend::Subspace(l) => l.depth,
        }
    }

    /// The subspace it serves, as the audit log names it.
    pub fn subspace_ref(&self) -> Option<SubspaceRef> {
        match self.backend {
            Backend::Pool => None,
            Backend::Subspace(l) => Some(l.audit_ref()),
        }
    }

    /// Sends a response within the write deadline; false if it did not
    /// reach the client's socket.
    pub async fn respond(&self, ctx: &Ctx, resp: &Response, fds: &[BorrowedFd<'_>]) -> bool {
        matches!(
            tokio::time::timeout(ctx.timeouts.write, self.chan.send(&resp.encode(), fds)).await,
            Ok(Ok(()))
        )
    }

    /// Answers a request with an error and writes its audit record (`deny`
    /// for [`ErrorKind::Denied`], else `error`); refusals (denied or
    /// invalid) are answered late once the uid has spent its refusal
    /// budget. Returns whether the answer reached the client's socket.
    pub async fn refuse(
        &self,
        ctx: &Ctx,
        record: AuditRecord,
        kind: ErrorKind,
        reason: String,
    ) -> bool {
        if matches!(kind, ErrorKind::Denied | ErrorKind::Invalid) {
            refusal_pause(ctx, self.peer.account()).await;
        }
        let delivered = self
            .respond(ctx, &Response::error(kind, reason.clone()), &[])
            .await;
        let outcome = match kind {
            ErrorKind::Denied => Outcome::Deny(reason),
            _ => Outcome::Error(reason),
        };
        self.finish(record, outcome, delivered).await;
        delivered
    }

    /// Writes a request's audit record, with the peer's user name once its
    /// lookup (started at accept) is done, or [`USER_NAME_WAIT`] has passed.
    pub async fn finish(&self, mut record: AuditRecord, outcome: Outcome, delivered: bool) {
        record.decide(outcome, delivered);
        if record.user.is_none() {
            record.user = self.peer.user_name(USER_NAME_WAIT).await;
        }
        // Written here, or by its drop if this task ends while it waits.
        drop(record);
    }
}

/// How long a request's audit record waits for the peer's user name (the
/// answer has been sent by then; only the next request on the connection
/// waits).
const USER_NAME_WAIT: Duration = Duration::from_millis(100);

impl Conn<'_> {}

/// Serves one connection until it ends.
pub async fn serve(ctx: Rc<Ctx>, chan: AsyncChannel, peer: Rc<PeerInfo>, backend: &Backend) {
    let conn = Conn {
        chan: &chan,
        peer: &peer,
        backend,
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
        let keep = match received {
            None => break, // idle or first-request deadline
            Some(Ok(None)) | Some(Err(RecvError::Io(_))) => break,
            Some(Ok(Some(got))) => {
                // On a subspace's conn, which a client passes on
                // (`SPACER_FD`), the process that sent this request, if it
                // is the conn's uid: nested subspaces are made from its
                // namespaces.
                let requester = got
                    .sender
                    .filter(|s| s.uid == peer.uid)
                    .and_then(|s| s.pidfd);
                pipeline::handle(&ctx, &conn, &buf[..got.len], t0, requester).await
            }
            Some(Err(e)) => {
                // Oversized, or with fds: answered and audited; a truncated
                // datagram also closes (its framing cannot be trusted).
                let close = matches!(e, RecvError::Truncated { .. });
                let reason = match e {
                    RecvError::Truncated { max } => format!("request larger than {max} bytes"),
                    _ => "fds attached to a request".to_owned(),
                };
                let record = AuditRecord::new(&peer, conn.subspace_ref(), t0);
                let delivered = conn.refuse(&ctx, record, ErrorKind::Invalid, reason).await;
                delivered && !close
            }
        };
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
/// fds still in flight. The kernel gives no wakeup for "the peer has read
/// everything", so this looks (`SIOCOUTQ`) with a growing pause.
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
/// unsolicited datagram); never for the pool.
async fn subspace_gone(backend: &Backend) {
    match backend {
        Backend::Pool => std::future::pending().await,
        Backend::Subspace(l) => l.gone().await,
    }
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
