//! # spacer-worker
//!
//! The privileged half of spacer. Trust level: **privileged** (it holds
//! `CAP_SYS_ADMIN`; every line is attack surface). It talks only over the
//! socket its parent handed it, confines itself before reading a request,
//! re-checks every request, and leaves its own namespaces as they were.
//! Processes, modules and trust: docs/ARCHITECTURE.md. The library exists
//! for the binary and for the tests of its seccomp filters; it is no API.

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

use spacer_proto::{launch::WorkerArgs, Channel};

/// What a worker process does; each has its own seccomp filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Started by the broker: forks room workers and the spawner, kills hung ones.
    Supervisor,
    /// Makes rooms in the host's namespaces.
    Rooms,
    /// Starts (and ends) every subspace worker of the broker's, at any depth.
    Spawner,
    /// Serves a client library directly (private mode), with its privileges.
    Private,
    /// Serves inside a subspace of a private worker.
    Subspace,
    /// Serves inside a subspace the spawner started.
    HostSubspace,
}

/// The worker process.
pub fn main() -> ExitCode {
    let refuse = |e: &dyn std::fmt::Display| {
        eprintln!(
            "spacer-worker: refusing to run: {e}\nspacer-worker is started by spacer-broker \
             (or by the spacer client library's private mode), never by hand; run \
             spacer-broker instead"
        );
        ExitCode::from(2)
    };
    let args = match WorkerArgs::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => return refuse(&e),
    };
    // SAFETY: the number is the one fd our parent left for us, and nothing
    // in this fresh process owns it yet.
    #[allow(unsafe_code)]
    let inherited = unsafe { sys::adopt_inherited_fd(args.channel_fd) };
    let channel = match inherited.map(Channel::from_fd) {
        Some(Ok(c)) => c,
        Some(Err(e)) => return refuse(&format!("channel: {e}")),
        None => return refuse(&"channel: no such fd"),
    };
    if let Err(e) = privilege::check_channel(&channel) {
        return refuse(&e);
    }
    let role = if args.private {
        Role::Private
    } else {
        Role::Supervisor
    };
    let mode = seccomp::Mode::logging(args.log_seccomp);
    if let Err(e) = privilege::confine(&channel, mode, role) {
        eprintln!("spacer-worker: cannot confine itself: {e}");
        return ExitCode::from(1);
    }
    let code = match role {
        Role::Private => serve::serve(channel, role, None),
        _ => supervise::supervise(channel),
    };
    ExitCode::from(code as u8)
}
