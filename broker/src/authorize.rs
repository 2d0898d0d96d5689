//! Step two: decide a valid request against one snapshot of the policy,
//! the uid's usage and the broker's own caps, and charge it once allowed
//! — with no `.await` between the decision and the charge, so two requests
//! at limit − 1 cannot both pass, and a refused request is never charged.

use spacer_policy::{Decision, Op, Policy, RuleRef};
use spacer_proto::wire::ErrorKind;
use spacer_proto::{IdMaps, MapChoice, Spaces};

use crate::ctx::Ctx;
use crate::peer::PeerInfo;
use crate::record::{AuditRecord, RuleId};
use crate::request::Valid;
use crate::rooms;
use crate::subids::{self, SubidError};
use crate::usage::ChargeGuard;

/// An allowed request: its charge (refunded unless committed) and the id
/// maps of a subspace that asked for other than the default.
#[derive(Debug)]
pub struct Grant<'c> {
    /// What the request is charged, until it hands its namespaces out.
    pub charge: ChargeGuard<'c>,
    /// A subspace's id maps (`None`: `0 <uid> 1`).
    pub maps: Option<IdMaps>,
}

/// Why a request is not served. The texts are the reasons clients get.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The process that connected is gone (its pid may be another's now).
    #[error("the connecting process has exited")]
    PeerExited,
    /// The policy says no: a type, an option, a limit, or subordinate ids.
    #[error("{0}")]
    Policy(String),
    /// The subordinate id files give the uid nothing to map.
    #[error("{0}")]
    Subids(SubidError),
    /// Reading the subordinate id files did not finish.
    #[error("looking up subordinate ids failed")]
    SubidLookup,
    /// The broker's own cap on live subspaces.
    #[error("{0}")]
    SubspaceCap(String),
    /// Nothing is granted that the audit log cannot record.
    #[error("service unavailable: the audit log cannot be written")]
    AuditUnavailable,
}

impl Refused {
    /// The error kind the client gets.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Refused::PeerExited | Refused::Policy(_) | Refused::Subids(_) => ErrorKind::Denied,
            Refused::SubspaceCap(_) => ErrorKind::Denied,
            Refused::SubidLookup => ErrorKind::Failed,
            Refused::AuditUnavailable => ErrorKind::Unavailable,
        }
    }
}

/// Decides `req` of `peer` on a connection at `depth`, recording the
/// deciding rule, and charges it if allowed.
pub async fn authorize<'c>(
    ctx: &'c Ctx,
    peer: &PeerInfo,
    depth: u32,
    req: &Valid,
    record: &mut AuditRecord,
) -> Result<Grant<'c>, Refused> {
    if !peer.alive() {
        return Err(Refused::PeerExited);
    }
    // One snapshot of the policy for the whole request.
    let policy = ctx.policy.borrow().clone();
    let who = peer.policy_peer();
    // At its live-room cap, a uid's rooms are checked first: those that are
    // gone no longer count.
    if req.op == Op::Rooms {
        if let Some(max) = policy.matching(&who).1.limits.max_rooms {
            let usage = ctx.counters.usage(peer.account(), depth);
            for t in req
                .spaces
                .types()
                .filter(|&t| usage.live_rooms_of(t) >= max)
            {
                rooms::forget_gone(ctx, peer.account(), t).await;
            }
        }
    }
    let maps = subordinate_maps(ctx, &policy, peer, depth, req, record).await?;
    if let Some(m) = &maps {
        record.uid_map = Some(IdMaps::summary(&m.uid));
        record.gid_map = Some(IdMaps::summary(&m.gid));
    }
    // The last await was above: from here to the charge, nothing else runs.
    let usage = ctx.counters.usage(peer.account(), depth);
    let decision = policy.decide(&who, req.op, req.spaces, &req.options.used(), &usage);
    match decision {
        Decision::Allow { rule } => note_rule(record, &rule),
        Decision::Deny { rule, reason } => {
            note_rule(record, &rule);
            return Err(Refused::Policy(reason));
        }
    }
    if req.op == Op::Subspace {
        ctx.counters
            .subspace_slot(peer.account(), ctx.max_subspaces)
            .map_err(Refused::SubspaceCap)?;
    }
    if !ctx.audit.ok() {
        return Err(Refused::AuditUnavailable);
    }
    let rooms = match req.op {
        Op::Rooms => req.spaces,
        Op::Subspace => Spaces::empty(),
    };
    let charge = ctx
        .counters
        .charge(peer.account(), req.op == Op::Subspace, rooms);
    Ok(Grant { charge, maps })
}

fn note_rule(record: &mut AuditRecord, rule: &RuleRef<'_>) {
    record.rule = Some(RuleId::from(rule));
    record.rule_name = rule.name().map(str::to_owned);
}

/// A subspace's id maps other than the default. Subordinate ids
/// (`auto`) are looked up only where the policy grants them and the
/// request would pass anyway; the files are read off the event loop (a
/// name lookup may be slow). The request is decided again after this wait,
/// before anything is charged.
async fn subordinate_maps(
    ctx: &Ctx,
    policy: &Policy,
    peer: &PeerInfo,
    depth: u32,
    req: &Valid,
    record: &mut AuditRecord,
) -> Result<Option<IdMaps>, Refused> {
    let who = peer.policy_peer();
    match req.map {
        MapChoice::Root => return Ok(None),
        MapChoice::Current => {
            return Ok(Some(IdMaps::single(peer.uid, peer.uid, peer.gid, peer.gid)))
        }
        MapChoice::Auto => {}
    }
    let usage = ctx.counters.usage(peer.account(), depth);
    let early = match policy.decide(&who, req.op, req.spaces, &[], &usage) {
        Decision::Deny { rule, reason } => Some((rule, reason)),
        Decision::Allow { rule } => match policy.check_subids(&who) {
            Err(reason) => Some((rule, reason)),
            Ok(()) if peer.uid == 0 => {
                Some((rule, "uid 0 has no subordinate ids to map".to_owned()))
            }
            Ok(()) => None,
        },
    };
    if let Some((rule, reason)) = early {
        note_rule(record, &rule);
        return Err(Refused::Policy(reason));
    }
    let (files, uid, gid) = (ctx.subids.clone(), peer.uid, peer.gid);
    match tokio::task::spawn_blocking(move || subids::auto_maps(&files, uid, gid)).await {
        Ok(Ok(m)) => Ok(Some(m)),
        Ok(Err(e)) => Err(Refused::Subids(e)),
        Err(_) => Err(Refused::SubidLookup),
    }
}
