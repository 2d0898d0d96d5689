//! # spacer-private-worker
//!
//! Private mode's worker: started by the spacer client library as a child
//! of the caller, it serves that caller directly (no broker, no policy, no
//! audit) with the caller's own privileges, and its subspaces. Trust
//! level: as trusted as its caller, whom it serves alone. It is its own
//! binary so that the root-run `spacer-worker` carries none of its roles,
//! lists or arguments; the making of rooms and subspaces it shares with
//! the daemon's worker through `spacer-worker`'s library ([`Part`]).
//! docs/ARCHITECTURE.md, "Private mode".

#![forbid(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;

use nix::unistd::{getegid, geteuid};
use spacer_core::internal::WorkerRequest;
use spacer_core::{IdMaps, Spaces};
use spacer_worker::seccomp::{self, always, prctl_ops, Entry};
use spacer_worker::Requester;
use spacer_worker::{serve, Error, Part};

/// What a private worker process does; each has its own seccomp filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Private {
    /// Serves a client library directly, with its privileges.
    Worker,
    /// Serves inside a subspace of a private worker.
    Subspace,
}

impl Part for Private {
    const DAEMON: bool = false;

    fn calls(self) -> Vec<Entry> {
        use libc::*;
        let mut e = seccomp::common();
        e.extend(seccomp::rooms());
        e.extend(seccomp::forking());
        e.extend(seccomp::subspace_setup());
        // subspace's write_own_maps: dumpable while it writes its own maps.
        e.push(prctl_ops(&[PR_SET_DUMPABLE]));
        if self == Private::Worker {
            // kill_descendants: /proc (std sizes reads by statx), a pause
            // between rounds.
            e.extend([SYS_read, SYS_statx, SYS_clock_nanosleep].map(always));
        }
        e
    }

    fn tree(self) -> &'static [Private] {
        match self {
            Private::Worker => &[Private::Worker, Private::Subspace],
            Private::Subspace => &[Private::Subspace],
        }
    }

    fn subspace(self) -> Private {
        Private::Subspace
    }

    fn max_fds(self) -> usize {
        0
    }

    fn refuses(self, req: &WorkerRequest) -> Option<&'static str> {
        match req {
            WorkerRequest::Alive { .. } => Some("only a room worker counts rooms"),
            WorkerRequest::End { .. } => Some("only the spawner ends subspaces"),
            _ => None,
        }
    }

    fn charges_requester(self) -> bool {
        false
    }

    fn ends_subspaces(self) -> bool {
        false
    }

    fn offsets_on_request(self) -> bool {
        true
    }

    fn room_error(self, e: Error) -> String {
        if e.errno() == Some(nix::errno::Errno::EPERM) && !geteuid().is_root() {
            return format!(
                "{e}; a private worker has only its caller's privileges: ask for a user \
                 subspace first and make rooms inside it"
            );
        }
        e.to_string()
    }

    /// Always its own caller; id maps only its own ids, at the first level.
    fn requester(
        self,
        _: Spaces,
        _: (u32, u32),
        _: (bool, bool),
        maps: Option<&IdMaps>,
        _: Vec<OwnedFd>,
    ) -> Result<Requester, String> {
        if let Some(maps) = maps {
            match self {
                Private::Worker if !maps.has_subordinate_ids() => {
                    maps.check(geteuid().as_raw(), getegid().as_raw())?
                }
                Private::Worker => {
                    return Err("subordinate ids are mapped by the broker's spawner only".into())
                }
                Private::Subspace => {
                    return Err("id maps are for first-level subspaces only".into())
                }
            }
        }
        Ok(Requester::Own)
    }

    /// The private worker takes its subspace workers, at any depth, with it.
    fn leave(self) {
        if self == Private::Worker {
            kill_descendants();
        }
    }
}

/// The private worker process.
pub fn main() -> ExitCode {
    let who = "the spacer client library's private mode";
    match spacer_worker::start("spacer-private-worker", who) {
        Ok((channel, args)) => {
            spacer_worker::confine_and_run(channel, args, Private::Worker, |channel| {
                serve::serve(channel, Private::Worker, None)
            })
        }
        Err(code) => code,
    }
}

/// Kills every descendant of this process (a child subreaper ignoring
/// `SIGCHLD`: a killed child's children come here for the next round)
/// until none is left. Each is pinned by a pidfd and checked to still be
/// ours before it is signalled.
fn kill_descendants() {
    let me = std::process::id();
    let read = |path: String| std::fs::read_to_string(path).unwrap_or_default();
    let ours = |l: &str| {
        l.strip_prefix("PPid:")
            .is_some_and(|v| v.trim() == me.to_string())
    };
    for _ in 0..200 {
        let children = read(format!("/proc/{me}/task/{me}/children"));
        if children.trim().is_empty() {
            return;
        }
        for pid in children.split_whitespace().filter_map(|p| p.parse().ok()) {
            let Ok(pidfd) = spacer_core::fd::pidfd_open(pid) else {
                continue;
            };
            if read(format!("/proc/{pid}/status")).lines().any(ours) {
                let _ = spacer_core::fd::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
