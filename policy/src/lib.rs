//! # spacer-policy
//!
//! The administrator's policy file (TOML): who may have which namespace
//! types, and how many. Trust level: runs in the unprivileged broker and in
//! the `spacer` tool; parses administrator input (trusted, but error-prone:
//! every mistake is reported with file, line and column).
//!
//! ```toml
//! [defaults]                # peers no rule matches
//! allow = []
//!
//! [[rule]]
//! name = "build users"      # optional, shown in the audit log
//! group = "developers"      # exactly one of uid, user, gid, group
//! allow = ["net", "uts", "user"]
//! options = ["loopback", "hostname"] # optional: room options it may use
//! requests_per_minute = 600 # optional limits
//! max_subspaces = 4
//! max_depth = 2
//! max_connections = 64
//! max_rooms = 64            # live rooms of each type
//! ```
//!
//! The first matching rule decides; no match means `[defaults]`; the
//! default is to deny. [`Policy::decide`] is a pure function of the peer,
//! the request and the broker's counters.

#![forbid(unsafe_code)]

mod diag;
mod model;
mod parse;
pub mod subids;

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub use diag::Diagnostic;
pub use model::{Decision, Grant, Limits, Matcher, Op, Peer, Policy, Rule, RuleRef, Usage};
pub use parse::{parse, Resolver, SystemResolver};

/// The policy spacer uses when none is given and `/etc/spacer/policy.toml`
/// does not exist: root may have everything, nobody else anything.
pub const EMBEDDED_DEFAULT: &str = r#"# spacer's embedded default policy: root may have everything,
# nobody else anything.
[defaults]
allow = []

[[rule]]
name = "root"
uid = 0
allow = ["cgroup", "ipc", "mnt", "net", "time", "uts", "user", "pid"]
options = ["loopback", "hostname", "time-offsets"]
"#;

/// The default policy path.
pub const DEFAULT_PATH: &str = "/etc/spacer/policy.toml";

/// The broker's per-uid cap on connections, live subspaces and live rooms
/// of each type where the policy sets none (`spacer-broker
/// --max-connections-per-uid`, `--max-subspaces-per-uid`,
/// `--max-rooms-per-uid`); see [`Limits::broker_defaults`].
pub const DEFAULT_PER_UID_CAP: u32 = 64;

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read policy file {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not safe to trust.
    #[error("policy file {path} {problem}; it must be owned by root and writable by root only")]
    Unsafe {
        /// The file.
        path: String,
        /// What is wrong with its ownership or mode.
        problem: String,
    },
    /// The text is not a valid policy.
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
}

/// Whether [`load_file`] checks the file's owner and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileCheck {
    /// The broker and `spacer policy check`: refuse a file not owned by
    /// root, or writable by group or others ([`ownership_problem`]).
    Strict,
    /// `spacer policy explain`: the content only (it warns about the owner
    /// and mode instead).
    ContentOnly,
}

/// What makes a policy file unsafe to trust, by the broker's rule: it must
/// be owned by root and writable by root only. `None` for a file the broker
/// accepts; else the problem, e.g. `is writable by others (mode 0666)`.
pub fn ownership_problem(meta: &std::fs::Metadata) -> Option<String> {
    if meta.uid() != 0 {
        Some(format!("is owned by uid {}", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "is writable by {} (mode {:04o})",
            if meta.mode() & 0o002 != 0 {
                "others"
            } else {
                "its group"
            },
            meta.mode() & 0o7777
        ))
    } else {
        None
    }
}

/// The kernel's overflow uid (what an unmapped uid reads as), 65534 unless
/// configured otherwise.
pub fn overflow_uid() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/overflowuid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65534)
}

/// Loads a policy file.
pub fn load_file(
    path: &Path,
    check: FileCheck,
    resolver: &dyn Resolver,
) -> Result<Policy, LoadError> {
    let shown = path.display().to_string();
    let read_err = |source| LoadError::Read {
        path: shown.clone(),
        source,
    };
    // One open: the owner and mode checked are those of the file read, not
    // of whatever the path names a moment later.
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(read_err)?;
    if check == FileCheck::Strict {
        let meta = file.metadata().map_err(read_err)?;
        if let Some(problem) = ownership_problem(&meta) {
            return Err(LoadError::Unsafe {
                path: shown,
                problem,
            });
        }
    }
    parse(&shown, &text, resolver, overflow_uid()).map_err(LoadError::Invalid)
}

/// The embedded default policy.
pub fn embedded_default() -> Policy {
    parse(
        "embedded default",
        EMBEDDED_DEFAULT,
        &SystemResolver,
        overflow_uid(),
    )
    .expect("the embedded default is valid")
}

#[cfg(test)]
mod tests;
