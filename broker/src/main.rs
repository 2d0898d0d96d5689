//! # spacer-broker
//!
//! The unprivileged front of spacer. Trust level: **parses untrusted
//! input** from every local user, but holds no capability: started as root,
//! it creates its socket and starts `spacer-worker` (the privileged half),
//! then drops to `--user` (no capabilities in any set, no_new_privs,
//! non-dumpable) before it reads a single client byte. It identifies peers
//! by the kernel (`SO_PEERCRED`, `SO_PEERGROUPS`, `SO_PEERPIDFD`), applies
//! the policy, writes one audit record per request, and relays the worker's
//! namespace fds. One thread, one event loop: a slow client never blocks
//! another.

#![deny(unsafe_code)]

mod achan;
mod audit;
mod conn;
mod journal;
mod listen;
mod pool;
mod privs;
mod subids;
#[allow(unsafe_code)]
mod sys;
mod usage;

use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::rc::Rc;
use std::time::Duration;

use clap::Parser;
use nix::sys::socket::{accept4, getsockopt, sockopt, SockFlag};
use spacer_policy::{FileCheck, Limits, Policy, SystemResolver};
use spacer_proto::internal::WorkerKind;
use spacer_proto::wire::{ErrorKind, Response};
use spacer_proto::{fd, launch, Channel};
use tokio::signal::unix::{signal, SignalKind};

use spacer_broker::cli::{Args, SeccompArg};

use crate::achan::AsyncChannel;
use crate::conn::{Backend, Ctx, PeerInfo, Timeouts};
use crate::listen::{Listener, Notifier};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
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
fn handled_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

fn main() -> ExitCode {
    let _ = handled_signals().thread_block();
    let args = Args::parse();
    let health = audit::init(args.log_format, &args.journal_socket);
    match run(args, health) {
        Ok(code) => code,
        Err(e) => {
            let mut chain = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                chain.push_str(": ");
                chain.push_str(&s.to_string());
                src = s.source();
            }
            tracing::error!(target: "spacer::event", event = "fatal", error = %chain, "cannot start");
            ExitCode::FAILURE
        }
    }
}

/// `--policy`, else the default file if it exists, else the embedded
/// default; with the broker's per-uid caps where the policy sets none.
fn load_policy(explicit: Option<&Path>, caps: &Limits) -> Result<Policy, spacer_policy::LoadError> {
    let default = Path::new(spacer_policy::DEFAULT_PATH);
    let policy = match explicit {
        Some(p) => spacer_policy::load_file(p, FileCheck::Strict, &SystemResolver)?,
        None if default.exists() => {
            spacer_policy::load_file(default, FileCheck::Strict, &SystemResolver)?
        }
        None => spacer_policy::embedded_default(),
    };
    Ok(policy.with_default_limits(caps))
}

/// The per-uid caps the broker applies where the policy sets none.
fn broker_caps(args: &Args) -> Limits {
    Limits {
        max_connections: Some(args.max_connections_per_uid),
        max_subspaces: Some(args.max_subspaces_per_uid),
        max_rooms: Some(args.max_rooms_per_uid),
        ..Limits::default()
    }
}

fn run(args: Args, health: audit::Health) -> Result<ExitCode, StartError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(StartError::NotRoot);
    }
    let started = std::time::Instant::now();
    raise_fd_limit(args.max_connections, args.max_subspaces);
    let policy = load_policy(args.policy.as_deref(), &broker_caps(&args))?;
    let target = privs::resolve(args.user.as_deref())?;
    let notifier = Notifier::from_env();
    let listener = match listen::inherited()? {
        Some(l) => l,
        None => listen::create(&args.socket)?,
    };
    let worker_exe = match &args.worker {
        Some(p) => p.clone(),
        None => {
            let beside = std::env::current_exe()
                .map_err(|e| StartError::Worker {
                    path: "spacer-worker".into(),
                    source: e,
                })?
                .with_file_name("spacer-worker");
            let installed = Path::new("/usr/libexec/spacer/spacer-worker");
            if !beside.exists() && installed.exists() {
                installed.to_owned()
            } else {
                beside
            }
        }
    };
    // A directory this broker made for its socket goes to a dedicated
    // broker user, so that it can remove the socket when it stops. Never to
    // `nobody`: other services share that user and could replace the socket.
    if let Some(dir) = &listener.created_dir {
        if target.name != "nobody" && target.uid != spacer_policy::overflow_uid() {
            nix::unistd::chown(
                dir,
                Some(nix::unistd::Uid::from_raw(target.uid)),
                Some(nix::unistd::Gid::from_raw(target.gid)),
            )
            .map_err(|e| {
                StartError::Listen(listen::ListenError::Io {
                    what: "handing the socket directory to the broker user:",
                    path: dir.clone(),
                    source: e.into(),
                })
            })?;
        }
    }
    let (sup_chan, sup_child, sup_pidfd, sup_stderr) = start_supervisor(&worker_exe, args.seccomp)?;
    privs::drop_to(&target)?;
    tracing::info!(target: "spacer::event", event = "privileges_dropped", user = %target.name, uid = target.uid, gid = target.gid, "privileges dropped: no capabilities, no_new_privs");
    if target.name == "nobody" {
        tracing::warn!(target: "spacer::event", event = "shared_user", user = %target.name, "running as nobody: other services that run as nobody can signal the broker; create a dedicated user (the package makes \"spacer\") or pass --user");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(
        &runtime,
        serve(
            args, health, policy, listener, sup_chan, sup_child, sup_pidfd, sup_stderr, notifier,
            started,
        ),
    );
    Ok(code)
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

/// Starts the worker supervisor: its channel, the child, a pidfd of it, and
/// the read end of the pipe that is the workers' stderr. The workers do not
/// share the broker's stderr, which carries the audit log: what they write
/// arrives as `worker_stderr` events ([`relay_worker_stderr`]).
fn start_supervisor(
    exe: &Path,
    seccomp: SeccompArg,
) -> Result<(Channel, Child, OwnedFd, OwnedFd), StartError> {
    let err = |source| StartError::Worker {
        path: exe.to_owned(),
        source,
    };
    let (mine, theirs) = Channel::pair().map_err(err)?;
    let theirs: OwnedFd = theirs.into();
    let (stderr_read, stderr_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| err(e.into()))?;
    let mut cmd = launch::worker_command(exe, &theirs);
    cmd.stderr(std::process::Stdio::from(stderr_write));
    if seccomp == SeccompArg::Log {
        cmd.args(["--seccomp", "log"]);
    }
    let child = cmd.spawn().map_err(err)?;
    // The command (and with it our copy of the pipe's write end) goes here.
    drop(cmd);
    drop(theirs);
    // Our own child, not yet waited for: its pid cannot have been reused.
    let pidfd = fd::pidfd_open(child.id() as i32).map_err(err)?;
    Ok((mine, child, pidfd, stderr_read))
}

/// The longest worker stderr line logged whole; longer ones are split.
const WORKER_LINE_MAX: usize = 1024;

/// Logs each line the workers write to stderr as a `worker_stderr` event,
/// with control characters and quotes escaped: a worker's words can never
/// pass for an audit record or another event. Ends when every worker has
/// closed the pipe.
async fn relay_worker_stderr(read_end: OwnedFd) {
    let pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(read_end) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(target: "spacer::event", event = "worker_stderr_lost", error = %e, "cannot read the workers' stderr");
            return;
        }
    };
    let emit = |line: &[u8]| {
        let text = String::from_utf8_lossy(line).escape_debug().to_string();
        tracing::warn!(target: "spacer::event", event = "worker_stderr", line = %text, "a worker wrote to stderr");
    };
    let mut line = Vec::with_capacity(WORKER_LINE_MAX);
    let mut chunk = [0u8; 1024];
    loop {
        if pipe.readable().await.is_err() {
            break;
        }
        let n = match pipe.try_read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        };
        for &b in &chunk[..n] {
            if b == b'\n' {
                emit(&line);
                line.clear();
                continue;
            }
            if line.len() == WORKER_LINE_MAX {
                emit(&line);
                line.clear();
            }
            line.push(b);
        }
    }
    if !line.is_empty() {
        emit(&line);
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    args: Args,
    health: audit::Health,
    policy: Policy,
    listener: Listener,
    sup_chan: Channel,
    mut sup_child: Child,
    sup_pidfd: OwnedFd,
    sup_stderr: OwnedFd,
    notifier: Notifier,
    started: std::time::Instant,
) -> ExitCode {
    tokio::task::spawn_local(relay_worker_stderr(sup_stderr));
    let notifier = Rc::new(notifier);
    let sup = match AsyncChannel::new(sup_chan) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(target: "spacer::event", event = "fatal", error = %e, "cannot watch the worker");
            return ExitCode::FAILURE;
        }
    };
    let sup = pool::Supervisor::new(sup);
    let new_pool = |kind, n| {
        pool::Pool::new(
            sup.clone(),
            kind,
            n,
            Duration::from_secs(args.request_timeout),
            Duration::from_secs(args.breaker_retry.max(1)),
        )
    };
    let pool = new_pool(WorkerKind::Rooms, args.workers);
    let spawner = new_pool(WorkerKind::Subspaces, 1);
    tokio::task::spawn_local(pool.clone().manage());
    tokio::task::spawn_local(spawner.clone().manage());
    let host_user_ns = match std::fs::File::open("/proc/self/ns/user")
        .and_then(|f| fd::namespace_inode(f.as_fd()))
    {
        Ok(ino) => ino,
        Err(e) => {
            tracing::error!(target: "spacer::event", event = "fatal", error = %e, "cannot read the broker's own user namespace");
            return ExitCode::FAILURE;
        }
    };
    let ctx = Rc::new(Ctx {
        policy: RefCell::new(Rc::new(policy)),
        pool: pool.clone(),
        spawner: spawner.clone(),
        host_user_ns,
        counters: usage::Counters::new(),
        audit: health,
        timeouts: Timeouts {
            first_request: Duration::from_secs(args.first_request_timeout),
            idle: Duration::from_secs(args.idle_timeout),
            write: Duration::from_secs(args.write_timeout),
        },
        next_subspace: Cell::new(1),
        max_subspaces: args.max_subspaces,
        subids: subids::Files {
            subuid: args.subuid.clone(),
            subgid: args.subgid.clone(),
        },
        stopping: Cell::new(false),
        stop: tokio::sync::Notify::new(),
    });
    // Ready once the first workers are up (or have failed to come up).
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while pool.pids().is_empty() || spawner.pids().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    {
        let p = ctx.policy.borrow();
        tracing::info!(
            target: "spacer::event",
            event = "start",
            version = env!("CARGO_PKG_VERSION"),
            socket = %listener.created.as_deref().unwrap_or(Path::new("(from systemd)")).display(),
            policy = p.source(),
            policy_sha256 = p.digest(),
            workers = ?pool.pids(),
            spawner = ?spawner.pids(),
            startup_us = started.elapsed().as_micros() as u64,
            "broker started"
        );
    }
    notifier.notify("READY=1");
    tokio::task::spawn_local(conn::sweep_rooms(ctx.clone()));

    let listen_fd = match listener.fd.try_clone().and_then(sys::register_fd) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(target: "spacer::event", event = "fatal", error = %e, "cannot watch the socket");
            return ExitCode::FAILURE;
        }
    };
    let sup_exit = match sys::register_fd(sup_pidfd) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(target: "spacer::event", event = "fatal", error = %e, "cannot watch the worker");
            return ExitCode::FAILURE;
        }
    };
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    // Handlers exist: a signal that came during start-up is delivered now.
    let _ = handled_signals().thread_unblock();
    let code = loop {
        tokio::select! {
            r = listen_fd.readable() => {
                let mut guard = match r { Ok(g) => g, Err(_) => break ExitCode::FAILURE };
                loop {
                    match accept4(listen_fd.get_ref().as_fd(), SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
                        Ok(fd) => accept(&ctx, fd, args.max_connections),
                        Err(nix::errno::Errno::EAGAIN) => { guard.clear_ready(); break; }
                        Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
                        Err(e) => {
                            // EMFILE and friends: back off briefly instead of spinning.
                            tracing::warn!(target: "spacer::event", event = "accept_failed", error = %e, "cannot accept");
                            guard.clear_ready();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            break;
                        }
                    }
                }
            }
            _ = sup_exit.readable() => {
                let _ = sup_child.wait();
                tracing::error!(target: "spacer::event", event = "supervisor_exited", "the worker supervisor exited: workers cannot be restarted; stopping");
                break ExitCode::FAILURE;
            }
            _ = hup.recv() => reload(&ctx, &args, &notifier),
            _ = term.recv() => break ExitCode::SUCCESS,
            _ = int.recv() => break ExitCode::SUCCESS,
        }
    };
    notifier.notify("STOPPING=1");
    ctx.stopping.set(true);
    ctx.stop.notify_waiters();
    // In-flight requests get a moment to be answered.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while ctx.counters.total_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    drop(listen_fd);
    if let Some(path) = &listener.created {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::info!(target: "spacer::event", event = "socket_left", path = %path.display(), error = %e, "the socket file stays (its directory is not the broker user's); the next start replaces it");
        }
    }
    // The supervisor is root: the broker cannot signal it, but closing its
    // channel makes it exit.
    sup.close();
    if tokio::time::timeout(Duration::from_secs(1), sup_exit.readable())
        .await
        .is_ok()
    {
        let _ = sup_child.wait();
    }
    tracing::info!(target: "spacer::event", event = "stop", "broker stopped");
    code
}

/// Re-reads the policy on a blocking thread (name lookups may be slow and
/// must not stall the event loop), then swaps it in; an invalid file keeps
/// the old one.
fn reload(ctx: &Rc<Ctx>, args: &Args, notifier: &Rc<Notifier>) {
    notifier.reloading();
    let path = args.policy.clone();
    let caps = broker_caps(args);
    let ctx = ctx.clone();
    let notifier = notifier.clone();
    tokio::task::spawn_local(async move {
        let loaded = tokio::task::spawn_blocking(move || load_policy(path.as_deref(), &caps)).await;
        match loaded {
            Ok(Ok(p)) => {
                tracing::info!(target: "spacer::event", event = "policy_reloaded", policy = p.source(), policy_sha256 = p.digest(), "policy reloaded");
                *ctx.policy.borrow_mut() = Rc::new(p);
            }
            Ok(Err(e)) => {
                let old = ctx.policy.borrow();
                tracing::error!(target: "spacer::event", event = "policy_reload_failed", error = %e, policy = old.source(), policy_sha256 = old.digest(), "policy reload failed; keeping the old policy");
            }
            Err(e) => {
                tracing::error!(target: "spacer::event", event = "policy_reload_failed", error = %e, "policy reload failed; keeping the old policy");
            }
        }
        notifier.notify("READY=1");
    });
}

/// Identifies a new peer and starts serving it, or refuses it.
fn accept(ctx: &Rc<Ctx>, fd: OwnedFd, global_cap: u32) {
    let Ok(chan) = Channel::from_fd(fd) else {
        return;
    };
    let Ok(cred) = chan.peer_credentials() else {
        return;
    };
    // Without its groups a peer could slip past a rule that matches one of
    // them: refused, never treated as having none.
    let groups = match sys::peer_groups(chan.as_fd()) {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(target: "spacer::event", event = "peer_refused", uid = cred.uid(), error = %e, "cannot read the peer's groups (SO_PEERGROUPS); connection refused");
            return;
        }
    };
    let pidfd = match getsockopt(&chan, sockopt::PeerPidfd) {
        Ok(p) => Some(p),
        // ESRCH: the peer is already gone; never authorize it.
        Err(nix::errno::Errno::ESRCH) => return,
        Err(_) => None,
    };
    let peer = Rc::new(PeerInfo {
        uid: cred.uid(),
        gid: cred.gid(),
        groups,
        pid: cred.pid(),
        pidfd,
    });
    let cap = ctx.policy.borrow().connection_limit(&spacer_policy::Peer {
        uid: peer.uid,
        gid: peer.gid,
        groups: &peer.groups,
    });
    let Ok(chan) = AsyncChannel::new(chan) else {
        return;
    };
    if let Err(reason) = ctx.counters.open_connection(peer.uid, cap, global_cap) {
        tracing::info!(target: "spacer::audit", uid = peer.uid, gid = peer.gid, pid = peer.pid, decision = "deny", reason = %reason, "connection refused");
        // Tell the client why (its first request reads this), then close.
        let msg = Response::error(ErrorKind::Denied, reason).encode();
        let _ = chan.get().send(&msg, &[]);
        return;
    }
    let ctx = ctx.clone();
    tokio::task::spawn_local(async move {
        let uid = peer.uid;
        conn::serve(ctx.clone(), chan, peer, &Backend::Pool).await;
        ctx.counters.close_connection(uid);
    });
}
