//! Start-up as root, in order: the policy, the socket, the worker
//! supervisor, then the privilege drop; and what can stop it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use spacer_broker::cli::Args;

use crate::listen::{self, Notifier};
use crate::service::Service;
use crate::{audit, policy_file, privs, supervisor};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("spacer-broker must be started as root: it starts the privileged worker, then drops to --user")]
    NotRoot,
    #[error(transparent)]
    Policy(#[from] spacer_policy::LoadError),
    #[error("cannot drop privileges")]
    Drop(#[from] privs::DropError),
    #[error("cannot set up the socket")]
    Listen(#[from] listen::ListenError),
    #[error("cannot start the worker {path}")]
    Worker {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the event loop")]
    Runtime(#[source] std::io::Error),
}

/// The signals the event loop handles. Blocked from the first instruction
/// until its handlers exist, so that one arriving during start-up (the
/// socket already accepts connections) waits for them instead of killing
/// the broker without cleanup.
pub fn handled_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

/// Does everything that needs root, drops it, and returns what the event
/// loop serves with.
pub fn start(args: Args, health: audit::Health) -> Result<Service, StartError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(StartError::NotRoot);
    }
    let started = Instant::now();
    raise_fd_limit(args.max_connections, args.max_subspaces);
    let policy = policy_file::load(args.policy.as_deref(), &policy_file::broker_caps(&args))?;
    let target = privs::resolve(args.user.as_deref())?;
    let notifier = Notifier::from_env();
    let listener = match listen::inherited()? {
        Some(l) => l,
        None => listen::create(&args.socket)?,
    };
    let worker_exe = worker_path(args.worker.as_deref())?;
    listen::hand_dir_to(&listener, &target)?;
    let supervisor =
        supervisor::start(&worker_exe, args.seccomp).map_err(|source| StartError::Worker {
            path: worker_exe.clone(),
            source,
        })?;
    privs::drop_to(&target)?;
    tracing::info!(target: "spacer::event", event = "privileges_dropped", user = %target.name, uid = target.uid, gid = target.gid, "privileges dropped: no capabilities, no_new_privs");
    if target.name == "nobody" {
        tracing::warn!(target: "spacer::event", event = "shared_user", user = %target.name, "running as nobody: other services that run as nobody can signal the broker; create a dedicated user (the package makes \"spacer\") or pass --user");
    }
    Ok(Service {
        args,
        health,
        policy,
        listener,
        supervisor,
        notifier,
        started,
    })
}

/// `--worker`, else `spacer-worker` next to this binary, else the
/// installed one if that is missing.
fn worker_path(explicit: Option<&Path>) -> Result<PathBuf, StartError> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    let beside = std::env::current_exe()
        .map_err(|e| StartError::Worker {
            path: "spacer-worker".into(),
            source: e,
        })?
        .with_file_name("spacer-worker");
    let installed = Path::new("/usr/libexec/spacer/spacer-worker");
    Ok(if !beside.exists() && installed.exists() {
        installed.to_owned()
    } else {
        beside
    })
}

/// Each connection costs the broker two fds (socket and peer pidfd), a
/// subspace up to five (its connection, its worker's channel, pidfd and
/// user namespace, and the pidfd of a request's sender), and the kernel
/// counts fds in flight to clients (one response of at most six fds per
/// connection, a subspace's included) against the broker's limit: make room
/// for all of it, while still root (raising the hard limit needs it).
fn raise_fd_limit(max_connections: u32, max_subspaces: u32) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let want = u64::from(max_connections) * 8 + u64::from(max_subspaces) * 11 + 256;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < want {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, want, hard.max(want));
        }
    }
}
