//! One request, in four steps: [`crate::request`] (decode and validate),
//! [`crate::authorize`] (decide and charge), [`crate::dispatch`] (the
//! worker makes it) and [`crate::relay`] (hand it out, commit the charge).
//!
//! Two guards make the invariants hold on every path: the request's
//! [`crate::record::AuditRecord`] is written exactly once, and its
//! [`crate::usage::ChargeGuard`] is given back unless what it paid for was
//! handed out. A failed step returns its error; the charge is refunded as
//! the steps unwind, before the client is answered.

use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Instant;

use spacer_proto::wire::ErrorKind;

use crate::authorize::{self, Refused};
use crate::conn::{Backend, Conn};
use crate::ctx::Ctx;
use crate::dispatch::{self, NotMade};
use crate::record::{AuditRecord, Outcome};
use crate::relay::{self, NotRelayed};
use crate::request::{self, Invalid};

/// Why a request was not served, by the step that stopped it.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Not a valid request.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// Not allowed, or not now.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The worker made nothing.
    #[error(transparent)]
    NotMade(#[from] NotMade),
    /// What was made could not be handed out.
    #[error(transparent)]
    NotRelayed(#[from] NotRelayed),
}

impl Failure {
    /// The error kind the client gets.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Failure::Invalid(_) => ErrorKind::Invalid,
            Failure::Refused(r) => r.kind(),
            Failure::NotMade(n) => n.kind(),
            Failure::NotRelayed(_) => ErrorKind::Failed,
        }
    }

    /// Whether the connection ends with this failure: a subspace whose
    /// worker died, hung, broke the protocol or returned rooms that fail
    /// the checks is closed.
    fn ends(&self, backend: &Backend) -> bool {
        match self {
            Failure::NotMade(NotMade::Call(_)) => matches!(backend, Backend::Subspace(_)),
            Failure::NotRelayed(NotRelayed::Misbehaved(_)) => true,
            _ => false,
        }
    }
}

/// Answers one request received at `t0`, sent by `requester` if that is
/// known (on a subspace's conn). Returns whether to keep the connection.
pub async fn handle(
    ctx: &Rc<Ctx>,
    conn: &Conn<'_>,
    bytes: &[u8],
    t0: Instant,
    requester: Option<OwnedFd>,
) -> bool {
    let mut record = AuditRecord::new(conn.peer, conn.subspace_ref(), t0);
    match steps(ctx, conn, bytes, requester.as_ref(), &mut record).await {
        Ok(delivered) => {
            conn.finish(record, Outcome::Allow, delivered).await;
            delivered
        }
        Err(failure) => {
            let ends = failure.ends(conn.backend);
            let delivered = conn
                .refuse(ctx, record, failure.kind(), failure.to_string())
                .await;
            delivered && !ends
        }
    }
}

/// The steps; `Ok(delivered)` once what was made has been sent.
async fn steps(
    ctx: &Rc<Ctx>,
    conn: &Conn<'_>,
    bytes: &[u8],
    requester: Option<&OwnedFd>,
    record: &mut AuditRecord,
) -> Result<bool, Failure> {
    let req = request::validate(bytes, conn.depth(), record)?;
    let grant = authorize::authorize(ctx, conn.peer, conn.depth(), &req, record).await?;
    let made = dispatch::dispatch(ctx, conn, &req, grant.maps.as_ref(), requester).await?;
    Ok(relay::relay(ctx, conn, grant, made, record).await?)
}
