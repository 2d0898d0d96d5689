//! From TOML text to a [`Policy`], with errors that point at the line.

use std::collections::BTreeSet;
use std::ops::Range;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use spacer_proto::{NsType, RoomOption, Spaces};
use toml::Spanned;

use crate::diag::Diagnostic;
use crate::model::{Grant, Limits, Matcher, Policy, Rule};

/// Resolves user and group names to ids (at load time only, never per
/// request: a slow name service must not block serving).
pub trait Resolver {
    /// The uid of a user name, if the user exists.
    fn user(&self, name: &str) -> Option<u32>;
    /// The gid of a group name, if the group exists.
    fn group(&self, name: &str) -> Option<u32>;
}

/// The system's user and group databases (NSS).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn user(&self, name: &str) -> Option<u32> {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    }

    fn group(&self, name: &str) -> Option<u32> {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    }
}

/// Upper bounds for limits: anything above is a typo, not a policy.
const MAX_RATE: i64 = 1_000_000;
const MAX_COUNT: i64 = 65_536;
/// The kernel nests user namespaces at most 32 deep.
const MAX_DEPTH: i64 = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    defaults: Option<Spanned<RawDefaults>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    allow: Option<Spanned<Vec<Spanned<String>>>>,
    options: Option<Spanned<Vec<Spanned<String>>>>,
    requests_per_minute: Option<Spanned<i64>>,
    max_subspaces: Option<Spanned<i64>>,
    max_depth: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    max_rooms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<Spanned<String>>,
    uid: Option<Spanned<i64>>,
    user: Option<Spanned<String>>,
    gid: Option<Spanned<i64>>,
    group: Option<Spanned<String>>,
    allow: Option<Spanned<Vec<Spanned<String>>>>,
    options: Option<Spanned<Vec<Spanned<String>>>>,
    requests_per_minute: Option<Spanned<i64>>,
    max_subspaces: Option<Spanned<i64>>,
    max_depth: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    max_rooms: Option<Spanned<i64>>,
    subids: Option<bool>,
}

struct Ctx<'a> {
    source: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> Box<Diagnostic> {
        Box::new(Diagnostic::new(
            self.source,
            self.text,
            span,
            message.into(),
        ))
    }
}

/// Parses and validates policy text. `source` names it in errors (a path,
/// or `embedded default`).
pub fn parse(
    source: &str,
    text: &str,
    resolver: &dyn Resolver,
    overflow_uid: u32,
) -> Result<Policy, Box<Diagnostic>> {
    let cx = Ctx { source, text };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        cx.err(span, e.message().trim().to_owned())
    })?;
    let defaults = match raw.defaults {
        Some(d) => {
            let d = d.into_inner();
            Grant {
                allow: allow_list(&cx, d.allow)?,
                options: option_list(&cx, d.options)?,
                limits: limits(
                    &cx,
                    [
                        d.requests_per_minute,
                        d.max_subspaces,
                        d.max_depth,
                        d.max_connections,
                        d.max_rooms,
                    ],
                )?,
                subids: false,
            }
        }
        None => Grant::default(),
    };
    let mut rules = Vec::with_capacity(raw.rule.len());
    for (i, spanned) in raw.rule.into_iter().enumerate() {
        let span = spanned.span();
        let r = spanned.into_inner();
        let matcher = matcher(&cx, span.clone(), &r, resolver)?;
        let name = match r.name {
            Some(n) => {
                let v = n.get_ref();
                if v.is_empty() || v.len() > 64 || v.chars().any(char::is_control) {
                    return Err(cx.err(n.span(), "a rule name is 1 to 64 printable characters"));
                }
                Some(n.into_inner())
            }
            None => None,
        };
        let grant = Grant {
            allow: allow_list(&cx, r.allow)?,
            options: option_list(&cx, r.options)?,
            limits: limits(
                &cx,
                [
                    r.requests_per_minute,
                    r.max_subspaces,
                    r.max_depth,
                    r.max_connections,
                    r.max_rooms,
                ],
            )?,
            subids: r.subids.unwrap_or(false),
        };
        rules.push(Rule {
            index: i + 1,
            name,
            matcher,
            grant,
            line: crate::diag::line_of(text, span.start),
        });
    }
    let digest = Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Policy {
        defaults,
        rules,
        overflow_uid,
        source: source.to_owned(),
        digest,
    })
}

fn matcher(
    cx: &Ctx<'_>,
    rule_span: Range<usize>,
    r: &RawRule,
    resolver: &dyn Resolver,
) -> Result<Matcher, Box<Diagnostic>> {
    let given: Vec<(&str, Range<usize>)> = [
        ("uid", r.uid.as_ref().map(|s| s.span())),
        ("user", r.user.as_ref().map(|s| s.span())),
        ("gid", r.gid.as_ref().map(|s| s.span())),
        ("group", r.group.as_ref().map(|s| s.span())),
    ]
    .into_iter()
    .filter_map(|(k, s)| s.map(|s| (k, s)))
    .collect();
    match given.as_slice() {
        [] => {
            return Err(cx.err(
                rule_span,
                "this rule has no matcher: give exactly one of uid, user, gid, group",
            ))
        }
        [_] => {}
        [(first, _), (second, span), ..] => {
            return Err(cx.err(
                span.clone(),
                format!(
                    "this rule has two matchers ({first} and {second}): \
                     give exactly one, and write one rule for each"
                ),
            ))
        }
    }
    if let Some(u) = &r.uid {
        return Ok(Matcher::Uid(id(cx, u)?));
    }
    if let Some(g) = &r.gid {
        return Ok(Matcher::Gid(id(cx, g)?));
    }
    if let Some(n) = &r.user {
        let uid = resolver
            .user(n.get_ref())
            .ok_or_else(|| cx.err(n.span(), format!("unknown user {:?}", n.get_ref())))?;
        return Ok(Matcher::User {
            name: n.get_ref().clone(),
            uid,
        });
    }
    let n = r.group.as_ref().expect("one matcher is present");
    let gid = resolver
        .group(n.get_ref())
        .ok_or_else(|| cx.err(n.span(), format!("unknown group {:?}", n.get_ref())))?;
    Ok(Matcher::Group {
        name: n.get_ref().clone(),
        gid,
    })
}

fn id(cx: &Ctx<'_>, v: &Spanned<i64>) -> Result<u32, Box<Diagnostic>> {
    match u32::try_from(*v.get_ref()) {
        Ok(id) if id != u32::MAX => Ok(id),
        _ => Err(cx.err(v.span(), "an id is a number from 0 to 4294967294")),
    }
}

fn allow_list(
    cx: &Ctx<'_>,
    allow: Option<Spanned<Vec<Spanned<String>>>>,
) -> Result<Spaces, Box<Diagnostic>> {
    let mut seen = BTreeSet::new();
    let mut spaces = Spaces::empty();
    for item in allow.map(Spanned::into_inner).unwrap_or_default() {
        let t = NsType::from_name(item.get_ref()).ok_or_else(|| {
            cx.err(
                item.span(),
                format!(
                    "unknown namespace type {:?} (known: cgroup ipc mnt net time uts user pid)",
                    item.get_ref()
                ),
            )
        })?;
        if !seen.insert(t) {
            return Err(cx.err(item.span(), format!("{t} is listed twice")));
        }
        spaces |= t.flag();
    }
    Ok(spaces)
}

fn option_list(
    cx: &Ctx<'_>,
    options: Option<Spanned<Vec<Spanned<String>>>>,
) -> Result<Vec<RoomOption>, Box<Diagnostic>> {
    let mut out: Vec<RoomOption> = Vec::new();
    for item in options.map(Spanned::into_inner).unwrap_or_default() {
        let o = RoomOption::from_name(item.get_ref()).ok_or_else(|| {
            cx.err(
                item.span(),
                format!(
                    "unknown option {:?} (known: {})",
                    item.get_ref(),
                    RoomOption::ALL.map(RoomOption::name).join(" ")
                ),
            )
        })?;
        if out.contains(&o) {
            return Err(cx.err(item.span(), format!("{o} is listed twice")));
        }
        out.push(o);
    }
    out.sort();
    Ok(out)
}

fn limits(cx: &Ctx<'_>, raw: [Option<Spanned<i64>>; 5]) -> Result<Limits, Box<Diagnostic>> {
    let [rate, subspaces, depth, conns, rooms] = raw;
    let check =
        |v: Option<Spanned<i64>>, key: &str, max: i64| -> Result<Option<u32>, Box<Diagnostic>> {
            match v {
                None => Ok(None),
                Some(s) => {
                    let n = *s.get_ref();
                    if (0..=max).contains(&n) {
                        Ok(Some(n as u32))
                    } else {
                        Err(cx.err(s.span(), format!("{key} must be from 0 to {max}")))
                    }
                }
            }
        };
    Ok(Limits {
        requests_per_minute: check(rate, "requests_per_minute", MAX_RATE)?,
        max_subspaces: check(subspaces, "max_subspaces", MAX_COUNT)?,
        max_depth: check(depth, "max_depth", MAX_DEPTH)?,
        max_connections: check(conns, "max_connections", MAX_COUNT)?,
        max_rooms: check(rooms, "max_rooms", MAX_COUNT)?,
    })
}
