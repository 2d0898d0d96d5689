//! The event loop: the worker pools, the connections' shared state, then
//! accept, reload and stop until a signal or the supervisor's exit; and
//! the orderly stop.

use std::cell::{Cell, RefCell};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use spacer_broker::cli::Args;
use spacer_policy::Policy;
use spacer_proto::fd;
use spacer_proto::internal::WorkerKind;
use tokio::signal::unix::{signal, SignalKind};

use crate::achan::AsyncChannel;
use crate::ctx::{Ctx, Timeouts};
use crate::listen::{Listener, Notifier};
use crate::peer::Names;
use crate::pool::{self, Pool};
use crate::startup::handled_signals;
use crate::tenants::Tenants;
use crate::{accept, audit, closer, reload, rooms, subids, supervisor, sys, usage, worker_stderr};

/// What the event loop serves with, made while the broker was root.
pub struct Service {
    /// The command line.
    pub args: Args,
    /// Whether the audit log is writable.
    pub health: audit::Health,
    /// The policy loaded at start.
    pub policy: Policy,
    /// The listening socket.
    pub listener: Listener,
    /// The worker supervisor.
    pub supervisor: supervisor::Started,
    /// systemd's readiness socket, if any.
    pub notifier: Notifier,
    /// When start-up began.
    pub started: Instant,
}

/// How long start-up waits for the first workers before it says ready.
const READY_WAIT: Duration = Duration::from_secs(5);
/// How long in-flight requests get to be answered on stop.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Serves until a stop signal (success) or a fatal event (failure).
pub async fn serve(service: Service) -> ExitCode {
    let Service {
        args,
        health,
        policy,
        listener,
        supervisor,
        notifier,
        started,
    } = service;
    let supervisor::Started {
        chan: sup_chan,
        child: mut sup_child,
        pidfd: sup_pidfd,
        stderr: sup_stderr,
    } = supervisor;
    tokio::task::spawn_local(worker_stderr::relay(sup_stderr));
    let notifier = Rc::new(notifier);
    let sup = match AsyncChannel::new(sup_chan) {
        Ok(s) => pool::Supervisor::new(s),
        Err(e) => return fatal(&e, "cannot watch the worker"),
    };
    let ctx = match context(&args, health, policy, &sup) {
        Ok(c) => c,
        Err(e) => return fatal(&e, "cannot read the broker's own user namespace"),
    };
    if let Err(e) = closer::start() {
        return fatal(&e, "cannot start the closer thread");
    }
    announce(&ctx, &listener, started).await;
    notifier.notify("READY=1");
    tokio::task::spawn_local(rooms::sweep(ctx.clone()));

    let listen_fd = match listener.fd.try_clone().and_then(sys::register_fd) {
        Ok(f) => f,
        Err(e) => return fatal(&e, "cannot watch the socket"),
    };
    let sup_exit = match sys::register_fd(sup_pidfd) {
        Ok(f) => f,
        Err(e) => return fatal(&e, "cannot watch the worker"),
    };
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    // Handlers exist: a signal that came during start-up is delivered now.
    let _ = handled_signals().thread_unblock();
    let code = loop {
        tokio::select! {
            r = listen_fd.readable() => match r {
                Ok(guard) => accept::accept_waiting(guard, &ctx, args.max_connections).await,
                Err(_) => break ExitCode::FAILURE,
            },
            _ = sup_exit.readable() => {
                let _ = sup_child.wait();
                tracing::error!(target: "spacer::event", event = "supervisor_exited", "the worker supervisor exited: workers cannot be restarted; stopping");
                break ExitCode::FAILURE;
            }
            _ = hup.recv() => reload::reload(&ctx, &args, &notifier),
            _ = term.recv() => break ExitCode::SUCCESS,
            _ = int.recv() => break ExitCode::SUCCESS,
        }
    };
    notifier.notify("STOPPING=1");
    ctx.stopping.set(true);
    ctx.stop.notify_waiters();
    // In-flight requests get a moment to be answered.
    let _ = tokio::time::timeout(STOP_GRACE, all_closed(&ctx)).await;
    drop(listen_fd);
    if let Some(path) = &listener.created {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::info!(target: "spacer::event", event = "socket_left", path = %path.display(), error = %e, "the socket file stays (its directory is not the broker user's); the next start replaces it");
        }
    }
    // The supervisor is root: the broker cannot signal it, but closing its
    // channel makes it exit.
    sup.close();
    if tokio::time::timeout(STOP_GRACE, sup_exit.readable())
        .await
        .is_ok()
    {
        let _ = sup_child.wait();
    }
    tracing::info!(target: "spacer::event", event = "stop", "broker stopped");
    code
}

/// The worker pools (started) and what all connections share.
fn context(
    args: &Args,
    health: audit::Health,
    policy: Policy,
    sup: &Rc<pool::Supervisor>,
) -> std::io::Result<Rc<Ctx>> {
    let new_pool = |kind, n| {
        Pool::new(
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
    let subids = subids::Files {
        subuid: args.subuid.clone(),
        subgid: args.subgid.clone(),
    };
    let host_user_ns =
        std::fs::File::open("/proc/self/ns/user").and_then(|f| fd::namespace_inode(f.as_fd()))?;
    Ok(Rc::new(Ctx {
        policy: RefCell::new(Rc::new(policy)),
        pool,
        spawner,
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
        subids: subids.clone(),
        tenants: Rc::new(Tenants::new(subids)),
        stopping: Cell::new(false),
        stop: tokio::sync::Notify::new(),
        closed: tokio::sync::Notify::new(),
        names: Names::default(),
    }))
}

/// Waits until the first workers are up (or have failed to come up), then
/// logs the start.
async fn announce(ctx: &Ctx, listener: &Listener, started: Instant) {
    let _ = tokio::time::timeout(READY_WAIT, async {
        tokio::join!(ctx.pool.running(), ctx.spawner.running())
    })
    .await;
    let p = ctx.policy.borrow();
    tracing::info!(
        target: "spacer::event",
        event = "start",
        version = env!("CARGO_PKG_VERSION"),
        socket = %listener.created.as_deref().unwrap_or(Path::new("(from systemd)")).display(),
        policy = p.source(),
        policy_sha256 = p.digest(),
        workers = %audit::Json(ctx.pool.pids()),
        spawner = %audit::Json(ctx.spawner.pids()),
        attached_fds = if closer::kernel_refuses() { "refused by the kernel" } else { "closed off the event loop" },
        startup_us = started.elapsed().as_micros() as u64,
        "broker started"
    );
}

/// Resolves once no client connection is open.
async fn all_closed(ctx: &Ctx) {
    loop {
        // Made before the count is read: a close in between still wakes it.
        let closed = ctx.closed.notified();
        if ctx.counters.total_connections() == 0 {
            return;
        }
        closed.await;
    }
}

/// Logs a fatal error of the event loop's set-up; the broker exits.
fn fatal(e: &std::io::Error, what: &str) -> ExitCode {
    tracing::error!(target: "spacer::event", event = "fatal", error = %e, "{}", what);
    ExitCode::FAILURE
}
