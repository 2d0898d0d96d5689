//! # spacer-worker
//!
//! The privileged half of spacer. Trust level: **privileged** — it holds
//! `CAP_SYS_ADMIN` (and the others in README.md, "Privileges"), so every
//! line is attack surface. It talks only over the socket its parent handed
//! it, confines itself before reading a request, re-checks every request,
//! and leaves its own namespaces as they were after each. Started by
//! `spacer-broker` it is the *supervisor*; by the client library's private
//! mode (`--private`) it serves directly. Processes, modules and trust:
//! docs/ARCHITECTURE.md. The library exists for the binary and for the
//! tests of its seccomp filter ([`seccomp`]); it is no API.

#![deny(unsafe_code)]

mod maker;
mod privilege;
pub mod seccomp;
mod serve;
mod subspace;
mod supervise;
#[allow(unsafe_code)]
mod sys;

use std::process::ExitCode;

use spacer_proto::{internal, Channel};

use crate::seccomp::SeccompMode;

/// What a worker process does; each has its own seccomp filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Started by the broker: forks room workers and the spawner on its
    /// request, and kills hung ones.
    Supervisor,
    /// Making rooms in the host's namespaces for the broker.
    Rooms,
    /// Starting (and ending) every subspace worker for the broker, at any
    /// depth; it sees no room request.
    Spawner,
    /// Serving a client library directly (private mode), with that
    /// process's own privileges.
    Private,
    /// Serving inside a subspace of a private worker: starts nested
    /// subspaces itself.
    Subspace,
    /// Serving inside a subspace the spawner started.
    HostSubspace,
}

const USAGE: &str = "spacer-worker is started by spacer-broker (or by the spacer client \
library's private mode), never by hand; run spacer-broker instead";

/// The arguments: the channel fd, the seccomp mode, private mode.
fn parse_args() -> Result<(i32, SeccompMode, bool), String> {
    let (mut channel_fd, mut seccomp, mut private) = (None, SeccompMode::Kill, false);
    let mut version = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--channel-fd" => {
                let v = args.next().ok_or("--channel-fd needs a value")?;
                channel_fd = Some(v.parse::<i32>().map_err(|_| "bad --channel-fd")?);
            }
            "--seccomp" => match args.next().as_deref() {
                Some("kill") => seccomp = SeccompMode::Kill,
                Some("log") => seccomp = SeccompMode::Log,
                _ => return Err("--seccomp takes kill or log".into()),
            },
            "--private" => private = true,
            "--internal-version" => {
                let v = args.next().ok_or("--internal-version needs a value")?;
                if v != internal::VERSION.to_string() {
                    return Err(format!(
                        "its caller speaks internal protocol {v}, this worker {}: install \
                         spacer-worker from the same build as spacer-broker and the spacer \
                         client library",
                        internal::VERSION
                    ));
                }
                version = true;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !version {
        return Err(format!(
            "no --internal-version: its caller comes from another build (this worker speaks \
             internal protocol {})",
            internal::VERSION
        ));
    }
    match channel_fd {
        Some(fd) if fd >= 3 => Ok((fd, seccomp, private)),
        Some(_) => Err("bad --channel-fd".into()),
        None => Err("no --channel-fd".into()),
    }
}

/// The worker process.
pub fn main() -> ExitCode {
    let refuse = |e: &dyn std::fmt::Display| {
        eprintln!("spacer-worker: refusing to run: {e}\n{USAGE}");
        ExitCode::from(2)
    };
    let (channel_fd, seccomp, private) = match parse_args() {
        Ok(a) => a,
        Err(e) => return refuse(&e),
    };
    // SAFETY: the number is the one fd our parent left for us, and nothing
    // in this fresh process owns it yet.
    #[allow(unsafe_code)]
    let inherited = unsafe { sys::adopt_inherited_fd(channel_fd) }
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EBADF));
    let channel = match inherited.and_then(Channel::from_fd) {
        Ok(c) => c,
        Err(e) => return refuse(&format!("channel: {e}")),
    };
    if let Err(e) = privilege::check_channel(&channel) {
        return refuse(&e);
    }
    let role = if private {
        Role::Private
    } else {
        Role::Supervisor
    };
    if let Err(e) = privilege::confine(&channel, seccomp, role) {
        eprintln!("spacer-worker: cannot confine itself: {e}");
        return ExitCode::from(1);
    }
    let code = match role {
        Role::Private => serve::serve(channel, role, None),
        _ => supervise::supervise(channel),
    };
    ExitCode::from(code as u8)
}
