//! The audit `decision` record: its schema, and the guard that writes
//! exactly one per request.
//!
//! An [`AuditRecord`] is made when a request arrives and filled in as the
//! request goes through the pipeline. It is written by
//! [`AuditRecord::finish`] with the request's outcome, or, if the request
//! ends without one (its task dropped), on drop as an `error`: no path
//! writes two records or none.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::time::Instant;

use serde::{Serialize, Serializer};
use spacer_policy::{Op, RuleRef};

use crate::peer::PeerInfo;

/// The `decision` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Namespaces handed out.
    Allow,
    /// Refused by the policy or a limit.
    Deny,
    /// Invalid, or failed after it was allowed.
    Error,
}

/// The `request` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// `Rooms`.
    Rooms,
    /// `Subspace`.
    Subspace,
    /// A datagram that did not decode.
    Unknown,
}

impl From<Op> for RequestKind {
    fn from(op: Op) -> RequestKind {
        match op {
            Op::Rooms => RequestKind::Rooms,
            Op::Subspace => RequestKind::Subspace,
        }
    }
}

/// The `rule` field: the deciding rule's 1-based index (a JSON number), or
/// `"defaults"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleId {
    /// A `[[rule]]`, by position in the file.
    Index(usize),
    /// `[defaults]`.
    Defaults,
}

impl From<&RuleRef<'_>> for RuleId {
    fn from(r: &RuleRef<'_>) -> RuleId {
        match r {
            RuleRef::Rule(rule) => RuleId::Index(rule.index),
            RuleRef::Defaults => RuleId::Defaults,
        }
    }
}

impl Serialize for RuleId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RuleId::Index(i) => s.serialize_u64(*i as u64),
            RuleId::Defaults => s.serialize_str("defaults"),
        }
    }
}

/// A subspace, as named in the audit log.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SubspaceRef {
    /// Broker-wide id, counting from 1.
    pub id: u64,
    /// 1 for a subspace of the host, 2 inside that, ...
    pub depth: u32,
}

/// A subordinate peer's owner, as the audit log names it.
#[derive(Debug, Serialize)]
pub struct TenantRef {
    /// The owner's uid.
    pub uid: u32,
    /// Its user name, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The audit record of one request. Field names are a stable schema (see
/// the README).
#[derive(Debug, Serialize)]
pub struct Decision {
    /// Peer uid (`SO_PEERCRED` at connect).
    pub uid: u32,
    /// Peer gid.
    pub gid: u32,
    /// Peer supplementary groups (`SO_PEERGROUPS`).
    pub groups: Vec<u32>,
    /// Peer pid at connect.
    pub pid: i32,
    /// Whether the peer is held by a pidfd (`SO_PEERPIDFD`), so that `pid`
    /// cannot have been reused.
    pub pidfd: bool,
    /// The uid's user name; absent for a uid without one (or whose lookup
    /// did not finish in time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The connecting process's name (`comm`) at accept, read through its
    /// pidfd; absent when it could not be shown to be that process's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// For a peer whose uid (or gid) is a subordinate id: the owner it is
    /// decided as and charged to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantRef>,
    /// `rooms`, `subspace`, or `unknown` for an undecodable request.
    pub request: RequestKind,
    /// Requested namespace types, by name.
    pub spaces: Vec<&'static str>,
    /// `allow`, `deny` or `error`.
    pub decision: Verdict,
    /// The deciding rule's index, or `defaults`; absent when the request
    /// never reached the policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleId>,
    /// The deciding rule's `name`, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<String>,
    /// Why (deny and error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Type → inode of every namespace handed out (allow).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<&'static str, u64>,
    /// The room options asked for (applied, when allowed): `loopback_up`,
    /// `hostname`, `domainname`, `monotonic_offset` and `boottime_offset`
    /// (decimal seconds, as text: exact to the nanosecond).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<&'static str, serde_json::Value>>,
    /// The subspace the request came through, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subspace: Option<SubspaceRef>,
    /// A subspace's id map choice, when not the default (`current`,
    /// `auto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map: Option<&'static str>,
    /// The uid map a subspace's user namespace was given, lines joined by
    /// commas (`"0 1000 1,1 100000 65536"`), when not `0 <uid> 1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid_map: Option<String>,
    /// Its gid map, likewise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid_map: Option<String>,
    /// For an allowed subspace: the new subspace's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_subspace: Option<u64>,
    /// Whether the response reached the client's socket.
    pub delivered: bool,
    /// From receiving the request to sending the response.
    pub duration_us: u64,
}

/// The audit form of a request's options; `None` when it has none.
pub fn options(o: &spacer_proto::RoomOptions) -> Option<BTreeMap<&'static str, serde_json::Value>> {
    let mut m = BTreeMap::new();
    if o.loopback_up {
        m.insert("loopback_up", true.into());
    }
    for (k, v) in [("hostname", &o.hostname), ("domainname", &o.domainname)] {
        if let Some(v) = v {
            m.insert(k, v.as_str().into());
        }
    }
    // As text: a JSON number would be read as a double by most consumers,
    // which cannot hold every offset to the nanosecond.
    for (k, v) in [
        ("monotonic_offset", o.monotonic_offset),
        ("boottime_offset", o.boottime_offset),
    ] {
        if let Some(v) = v {
            m.insert(k, v.to_string().into());
        }
    }
    (!m.is_empty()).then_some(m)
}

/// How a request ended.
#[derive(Debug)]
pub enum Outcome {
    /// Namespaces handed out (or sent, if not delivered).
    Allow,
    /// Refused by the policy or a limit, with the reason.
    Deny(String),
    /// Invalid, or failed, with the reason.
    Error(String),
}

/// The reason of an allowed request whose response the client did not take.
const UNDELIVERED: &str = "undelivered: the client did not take the response";
/// The reason of a request that ended without an outcome.
const ABANDONED: &str = "abandoned: the request ended before it was answered";

/// The record of one request being served: written exactly once, when
/// dropped, with the outcome [`AuditRecord::decide`] gave it, or else as an
/// `error` (abandoned).
#[derive(Debug)]
pub struct AuditRecord {
    rec: Decision,
    t0: Instant,
    decided: bool,
    written: bool,
}

impl AuditRecord {
    /// The record of a request of `peer` received at `t0`, through
    /// `subspace` if any; `unknown` and `error` until filled in.
    pub fn new(peer: &PeerInfo, subspace: Option<SubspaceRef>, t0: Instant) -> AuditRecord {
        AuditRecord {
            rec: Decision {
                uid: peer.uid,
                gid: peer.gid,
                groups: peer.groups.clone(),
                pid: peer.pid,
                pidfd: peer.pidfd.is_some(),
                user: peer.user.as_ref().and_then(|u| u.known()),
                comm: peer.comm.clone(),
                tenant: peer.tenant.as_ref().map(|t| TenantRef {
                    uid: t.uid,
                    user: t.name.clone(),
                }),
                request: RequestKind::Unknown,
                spaces: Vec::new(),
                decision: Verdict::Error,
                rule: None,
                rule_name: None,
                reason: None,
                namespaces: BTreeMap::new(),
                options: None,
                subspace,
                map: None,
                uid_map: None,
                gid_map: None,
                new_subspace: None,
                delivered: false,
                duration_us: 0,
            },
            t0,
            decided: false,
            written: false,
        }
    }

    /// Fills in the request's outcome: from here the record is written with
    /// it, at the latest when dropped (a task ended while it waits for
    /// more, such as the user name, still records what happened).
    pub fn decide(&mut self, outcome: Outcome, delivered: bool) {
        let (verdict, reason) = match outcome {
            Outcome::Allow => (Verdict::Allow, (!delivered).then(|| UNDELIVERED.to_owned())),
            Outcome::Deny(r) => (Verdict::Deny, Some(r)),
            Outcome::Error(r) => (Verdict::Error, Some(r)),
        };
        self.rec.decision = verdict;
        self.rec.reason = reason;
        self.rec.delivered = delivered;
        self.decided = true;
    }

    /// Writes the record with the request's outcome.
    #[cfg(test)]
    fn finish(mut self, outcome: Outcome, delivered: bool) {
        self.decide(outcome, delivered);
        self.write();
    }

    fn write(&mut self) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        self.rec.duration_us = self.t0.elapsed().as_micros() as u64;
        let json = serde_json::to_string(&self.rec).unwrap_or_else(|_| "{}".into());
        crate::audit::emit(&json);
    }
}

impl Drop for AuditRecord {
    fn drop(&mut self) {
        if !self.written && !self.decided {
            self.rec.decision = Verdict::Error;
            self.rec.reason = Some(ABANDONED.to_owned());
            self.rec.delivered = false;
        }
        self.write();
    }
}

impl Deref for AuditRecord {
    type Target = Decision;
    fn deref(&self) -> &Decision {
        &self.rec
    }
}

impl DerefMut for AuditRecord {
    fn deref_mut(&mut self) -> &mut Decision {
        &mut self.rec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::capture;

    fn peer() -> PeerInfo {
        PeerInfo {
            uid: 1000,
            gid: 100,
            groups: vec![10],
            pid: 42,
            pidfd: None,
            comm: Some("tool \"x\"\n".into()),
            user: None,
            tenant: None,
        }
    }

    #[test]
    fn finish_writes_one_record_with_numbers_as_numbers() {
        let lines = capture(|| {
            let mut r = AuditRecord::new(
                &peer(),
                Some(SubspaceRef { id: 3, depth: 1 }),
                Instant::now(),
            );
            r.request = RequestKind::Rooms;
            r.rule = Some(RuleId::Index(2));
            r.namespaces.insert("net", 4026532301);
            r.finish(Outcome::Allow, true);
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v = &lines[0];
        assert_eq!(v["target"], "spacer::audit");
        assert_eq!(v["message"], "decision");
        assert_eq!(v["decision"], "allow");
        assert_eq!(v["request"], "rooms");
        assert_eq!(v["rule"], 2);
        assert_eq!(v["uid"], 1000);
        assert_eq!(v["groups"], serde_json::json!([10]));
        assert_eq!(v["subspace"], serde_json::json!({"id": 3, "depth": 1}));
        assert_eq!(v["namespaces"]["net"], 4026532301u64);
        assert_eq!(v["delivered"], true);
        assert!(v["reason"].is_null(), "{v}");
        // A name the client chose, escaped as JSON.
        assert_eq!(v["comm"], "tool \"x\"\n");
        assert!(v["user"].is_null(), "{v}");
    }

    #[test]
    fn a_refusal_says_why_and_defaults_is_a_word() {
        let lines = capture(|| {
            let mut r = AuditRecord::new(&peer(), None, Instant::now());
            r.rule = Some(RuleId::Defaults);
            r.finish(Outcome::Deny("net not allowed by defaults".into()), true);
            let r = AuditRecord::new(&peer(), None, Instant::now());
            r.finish(Outcome::Allow, false);
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["decision"], "deny");
        assert_eq!(lines[0]["rule"], "defaults");
        assert_eq!(lines[0]["reason"], "net not allowed by defaults");
        assert_eq!(lines[1]["decision"], "allow");
        assert_eq!(lines[1]["reason"], UNDELIVERED);
        assert_eq!(lines[1]["delivered"], false);
    }

    #[test]
    fn a_decided_record_dropped_while_it_waits_keeps_its_outcome() {
        let lines = capture(|| {
            let mut r = AuditRecord::new(&peer(), None, Instant::now());
            r.decide(Outcome::Allow, true);
            drop(r);
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["decision"], "allow");
        assert_eq!(lines[0]["delivered"], true);
    }

    #[test]
    fn a_record_dropped_without_an_outcome_is_an_error() {
        let lines = capture(|| {
            let mut r = AuditRecord::new(&peer(), None, Instant::now());
            r.request = RequestKind::Subspace;
            r.decision = Verdict::Allow;
            drop(r);
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["decision"], "error");
        assert_eq!(lines[0]["request"], "subspace");
        assert_eq!(lines[0]["reason"], ABANDONED);
        assert_eq!(lines[0]["delivered"], false);
    }
}
