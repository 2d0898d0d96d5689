//! The policy as the broker uses it, and the pure decision function.

use std::fmt;

use spacer_proto::{RoomOption, Spaces};

/// A loaded, validated policy. Immutable: a reload builds a new one.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) defaults: Grant,
    pub(crate) rules: Vec<Rule>,
    pub(crate) overflow_uid: u32,
    pub(crate) source: String,
    pub(crate) digest: String,
}

/// One `[[rule]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// 1-based position in the file.
    pub index: usize,
    /// The optional `name = "..."`.
    pub name: Option<String>,
    /// Who it matches.
    pub matcher: Matcher,
    /// What it grants.
    pub grant: Grant,
    /// The line of its `[[rule]]` header.
    pub line: usize,
}

/// Who a rule matches. Exact equality only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// `uid = N`
    Uid(u32),
    /// `user = "name"`, resolved at load time.
    User {
        /// As written.
        name: String,
        /// Resolved.
        uid: u32,
    },
    /// `gid = N`: primary or supplementary group.
    Gid(u32),
    /// `group = "name"`, resolved at load time: primary or supplementary.
    Group {
        /// As written.
        name: String,
        /// Resolved.
        gid: u32,
    },
}

impl Matcher {
    /// The uid this matcher names, if it names one.
    pub fn uid(&self) -> Option<u32> {
        match *self {
            Matcher::Uid(u) | Matcher::User { uid: u, .. } => Some(u),
            _ => None,
        }
    }

    /// The gid this matcher names, if it names one.
    pub fn gid(&self) -> Option<u32> {
        match *self {
            Matcher::Gid(g) | Matcher::Group { gid: g, .. } => Some(g),
            _ => None,
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Uid(u) => write!(f, "uid {u}"),
            Matcher::User { name, uid } => write!(f, "user {name:?} (uid {uid})"),
            Matcher::Gid(g) => write!(f, "gid {g}"),
            Matcher::Group { name, gid } => write!(f, "group {name:?} (gid {gid})"),
        }
    }
}

/// What a rule (or `[defaults]`) grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// Namespace types that may be created.
    pub allow: Spaces,
    /// Room options a request may use (`options = [...]`).
    pub options: Vec<RoomOption>,
    /// Limits; `None` is unlimited.
    pub limits: Limits,
    /// Whether a subspace may map the subordinate ids `/etc/subuid` and
    /// `/etc/subgid` give the peer (`subids = true`, rules only).
    pub subids: bool,
}

/// The optional limits of a grant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per uid per minute (allowed ones only are counted).
    pub requests_per_minute: Option<u32>,
    /// Live subspace workers per uid.
    pub max_subspaces: Option<u32>,
    /// How deep subspaces may nest (1: a subspace, but none inside it).
    pub max_depth: Option<u32>,
    /// Open connections per uid.
    pub max_connections: Option<u32>,
    /// Live rooms of each type per uid: namespaces made for it (directly
    /// or through its subspaces) that still exist, whoever holds them.
    pub max_rooms: Option<u32>,
}

impl Limits {
    /// The caps `spacer-broker` applies where the policy sets none, unless
    /// its command line changes them: [`crate::DEFAULT_PER_UID_CAP`]
    /// connections, subspaces and live rooms of each type per uid; no rate
    /// and no depth limit.
    pub fn broker_defaults() -> Limits {
        Limits {
            max_connections: Some(crate::DEFAULT_PER_UID_CAP),
            max_subspaces: Some(crate::DEFAULT_PER_UID_CAP),
            max_rooms: Some(crate::DEFAULT_PER_UID_CAP),
            ..Limits::default()
        }
    }

    /// `(key, value)` of every limit, set or not, in file order.
    pub fn each(&self) -> [(&'static str, Option<u32>); 5] {
        [
            ("requests_per_minute", self.requests_per_minute),
            ("max_subspaces", self.max_subspaces),
            ("max_depth", self.max_depth),
            ("max_connections", self.max_connections),
            ("max_rooms", self.max_rooms),
        ]
    }

    /// `(key, value)` of the limits that are set, in file order.
    pub fn set(&self) -> Vec<(&'static str, u32)> {
        let set = |(k, v): (_, Option<u32>)| v.map(|v| (k, v));
        self.each().into_iter().filter_map(set).collect()
    }
}

/// A peer as the kernel identified it at connect time.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// `SO_PEERCRED` uid.
    pub uid: u32,
    /// `SO_PEERCRED` gid.
    pub gid: u32,
    /// `SO_PEERGROUPS`.
    pub groups: &'a [u32],
}

/// Which part of the policy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleRef<'a> {
    /// A `[[rule]]`.
    Rule(&'a Rule),
    /// `[defaults]`.
    Defaults,
}

impl RuleRef<'_> {
    /// `"2"` or `"defaults"`, for the audit log's `rule` field.
    pub fn id(&self) -> String {
        match self {
            RuleRef::Rule(r) => r.index.to_string(),
            RuleRef::Defaults => "defaults".to_owned(),
        }
    }

    /// The rule's `name`, if it has one.
    pub fn name(&self) -> Option<&str> {
        match self {
            RuleRef::Rule(r) => r.name.as_deref(),
            RuleRef::Defaults => None,
        }
    }
}

impl fmt::Display for RuleRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleRef::Rule(Rule {
                index,
                name: Some(n),
                ..
            }) => write!(f, "rule {index} ({n:?})"),
            RuleRef::Rule(r) => write!(f, "rule {}", r.index),
            RuleRef::Defaults => f.write_str("defaults"),
        }
    }
}

/// The request being decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `Rooms`
    Rooms,
    /// `Subspace`
    Subspace,
}

/// What the broker counts for a uid, at the moment of the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Allowed requests of this uid in the last minute.
    pub requests_last_minute: u32,
    /// Live subspace workers of this uid.
    pub live_subspaces: u32,
    /// Subspace depth of the connection the request came on (0: the host).
    pub depth: u32,
    /// Live rooms of this uid, per room type (in [`Spaces::ROOMS`] order:
    /// cgroup, ipc, mnt, net, time, uts), including those being made.
    pub live_rooms: [u32; 6],
}

impl Usage {
    /// Live rooms of type `t` (0 for a type that is no room type).
    pub fn live_rooms_of(&self, t: spacer_proto::NsType) -> u32 {
        Spaces::ROOMS
            .types()
            .position(|x| x == t)
            .map_or(0, |i| self.live_rooms[i])
    }
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Go ahead.
    Allow {
        /// Who decided.
        rule: RuleRef<'a>,
    },
    /// No; nothing is created and nothing charged.
    Deny {
        /// Who decided.
        rule: RuleRef<'a>,
        /// Why, naming the types or the limit and its value.
        reason: String,
    },
}

impl Policy {
    /// The rule that decides for `peer` (first match), or the defaults.
    ///
    /// A peer whose uid is the kernel's overflow uid (how a peer from an
    /// unmapped user namespace appears) is matched only by rules that name
    /// that uid; its groups and gid are not trusted.
    pub fn matching(&self, peer: &Peer<'_>) -> (RuleRef<'_>, &Grant) {
        let overflow = peer.uid == self.overflow_uid;
        for rule in &self.rules {
            let hit = match &rule.matcher {
                Matcher::Uid(u) | Matcher::User { uid: u, .. } => *u == peer.uid,
                Matcher::Gid(g) | Matcher::Group { gid: g, .. } => {
                    !overflow && (*g == peer.gid || peer.groups.contains(g))
                }
            };
            if hit {
                return (RuleRef::Rule(rule), &rule.grant);
            }
        }
        (RuleRef::Defaults, &self.defaults)
    }

    /// Whether the grant that decides for `peer` lets a subspace map its
    /// subordinate ids: `Err` with the denial's reason if not. Pure.
    pub fn check_subids(&self, peer: &Peer<'_>) -> Result<(), String> {
        let (rule, grant) = self.matching(peer);
        if grant.subids {
            Ok(())
        } else {
            Err(format!("subordinate ids not allowed by {rule}"))
        }
    }

    /// Decides a request. Pure: no I/O, no clock, no state but `usage`.
    /// The order of checks: types, options, then live rooms, nesting depth,
    /// live subspaces, then rate — so that a request denied for what it
    /// asks is never charged.
    pub fn decide(
        &self,
        peer: &Peer<'_>,
        op: Op,
        spaces: Spaces,
        options: &[RoomOption],
        usage: &Usage,
    ) -> Decision<'_> {
        let (rule, grant) = self.matching(peer);
        let missing = spaces - grant.allow;
        if !missing.is_empty() {
            return Decision::Deny {
                rule,
                reason: format!("{missing} not allowed by {rule}"),
            };
        }
        if let Some(o) = options.iter().find(|o| !grant.options.contains(o)) {
            return Decision::Deny {
                rule,
                reason: format!("option {o} not allowed by {rule}"),
            };
        }
        let limits = &grant.limits;
        if let (Op::Rooms, Some(max)) = (op, limits.max_rooms) {
            if let Some(t) = spaces.types().find(|&t| usage.live_rooms_of(t) >= max) {
                return Decision::Deny {
                    rule,
                    reason: format!(
                        "{t}: {} live rooms held (limit {max}, {rule})",
                        usage.live_rooms_of(t)
                    ),
                };
            }
        }
        if op == Op::Subspace {
            if let Some(max) = limits.max_depth {
                if usage.depth >= max {
                    return Decision::Deny {
                        rule,
                        reason: format!("max_depth {max} reached ({rule})"),
                    };
                }
            }
            if let Some(max) = limits.max_subspaces {
                if usage.live_subspaces >= max {
                    return Decision::Deny {
                        rule,
                        reason: format!("max_subspaces {max} reached ({rule})"),
                    };
                }
            }
        }
        if let Some(max) = limits.requests_per_minute {
            if usage.requests_last_minute >= max {
                return Decision::Deny {
                    rule,
                    reason: format!("requests_per_minute {max} reached ({rule})"),
                };
            }
        }
        Decision::Allow { rule }
    }

    /// Fills every limit that neither a rule nor `[defaults]` sets with the
    /// service's own default (the broker's per-uid caps). A rule for uid 0
    /// gets no default room cap (root makes namespaces without spacer
    /// anyway); it can set one.
    pub fn with_default_limits(mut self, d: &Limits) -> Policy {
        let fill = |l: &mut Limits, root: bool| {
            l.requests_per_minute = l.requests_per_minute.or(d.requests_per_minute);
            l.max_subspaces = l.max_subspaces.or(d.max_subspaces);
            l.max_depth = l.max_depth.or(d.max_depth);
            l.max_connections = l.max_connections.or(d.max_connections);
            if !root {
                l.max_rooms = l.max_rooms.or(d.max_rooms);
            }
        };
        fill(&mut self.defaults.limits, false);
        for r in &mut self.rules {
            fill(&mut r.grant.limits, r.matcher.uid() == Some(0));
        }
        self
    }

    /// The `max_connections` that applies to `peer`, if any.
    pub fn connection_limit(&self, peer: &Peer<'_>) -> Option<u32> {
        self.matching(peer).1.limits.max_connections
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// `[defaults]`.
    pub fn defaults(&self) -> &Grant {
        &self.defaults
    }

    /// Where the policy came from: a path, or `embedded default`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// SHA-256 of the policy text, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The rules that can never match, each with the first earlier rule
    /// that matches the same peers. Matching is exact, so a rule is
    /// unreachable exactly when an earlier one names the same uid (`uid` or
    /// `user`) or the same gid (`gid` or `group`): no set of rules for other
    /// ids covers every peer of a uid or a gid.
    pub fn shadowed(&self) -> Vec<(&Rule, &Rule)> {
        self.rules
            .iter()
            .enumerate()
            .filter_map(|(j, later)| {
                self.rules[..j]
                    .iter()
                    .find(|earlier| {
                        (earlier.matcher.uid().is_some()
                            && earlier.matcher.uid() == later.matcher.uid())
                            || (earlier.matcher.gid().is_some()
                                && earlier.matcher.gid() == later.matcher.gid())
                    })
                    .map(|earlier| (later, earlier))
            })
            .collect()
    }

    /// Things an administrator should know that are not errors: rules that
    /// can never match, and what granting `user` means.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (later, earlier) in self.shadowed() {
            out.push(format!(
                "{} ({}) can never match: {} ({}) matches the same peers first",
                RuleRef::Rule(later),
                later.matcher,
                RuleRef::Rule(earlier),
                earlier.matcher
            ));
        }
        let grants = self
            .rules
            .iter()
            .map(|r| (RuleRef::Rule(r), &r.grant))
            .chain([(RuleRef::Defaults, &self.defaults)]);
        for (rule, grant) in grants {
            for o in &grant.options {
                if !grant.allow.contains(o.needs()) {
                    out.push(format!(
                        "{rule} allows option {o} but not {}: the option can never be used",
                        o.needs()
                    ));
                }
            }
        }
        let user_grants = self
            .rules
            .iter()
            .filter(|r| r.grant.allow.contains(Spaces::USER))
            .map(|r| RuleRef::Rule(r).to_string())
            .chain(
                self.defaults
                    .allow
                    .contains(Spaces::USER)
                    .then(|| "defaults".to_owned()),
            )
            .collect::<Vec<_>>();
        if !user_grants.is_empty() {
            out.push(format!(
                "{} grant{} user: a holder can create every other namespace type inside \
                 that user namespace with its own powers, whatever else the policy allows",
                user_grants.join(", "),
                if user_grants.len() == 1 { "s" } else { "" }
            ));
        }
        out
    }
}
