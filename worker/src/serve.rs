//! The request loops: a serving worker (host or subspace) answers
//! [`WorkerRequest`]s in order; the supervisor starts and stops serving
//! workers for the broker.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use spacer_proto::internal::{
    self, SupervisorReply, SupervisorRequest, WorkerReply, WorkerRequest,
};
use spacer_proto::{check_spaces, fd, Channel, RecvError, Spaces};

use crate::maker::Maker;
use crate::subspace::{self, SpawnError};
use crate::sys::{self, Cloned};

/// Which worker this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serving in the host's namespaces for the broker: may hand a new user
    /// namespace to the requester's ids.
    Host,
    /// Serving a client library directly (private mode), with that
    /// process's own privileges: never switches ids; when its client goes,
    /// it ends every subspace worker below it.
    Private,
    /// Serving inside a subspace: already the requester.
    Subspace,
}

/// A subspace being set up, and the request it answers.
struct Pending {
    id: u64,
    starting: subspace::Starting,
}

/// What a reply carries.
type Answer = (WorkerReply, Vec<OwnedFd>, bool);

/// Serves requests on `channel` until the other end closes. Returns the
/// process's exit code.
///
/// Rooms are answered at once. A subspace request starts a subspace worker
/// and is answered when that worker is ready (or failed, or missed its
/// deadline); meanwhile the loop serves on. The broker matches replies to
/// requests by id. `offsets_file`: a subspace worker's time offsets file,
/// opened during its setup.
pub fn serve(channel: Channel, role: Role, offsets_file: Option<std::fs::File>) -> i32 {
    let mut maker = match Maker::new(offsets_file) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("spacer-worker: cannot record own namespaces: {e}");
            return 1;
        }
    };
    let mut buf = vec![0u8; internal::MAX_BYTES];
    let mut pending: Vec<Pending> = Vec::new();
    loop {
        // With nothing pending, block in recv (no extra syscall per request).
        let request_ready = pending.is_empty() || wait(&channel, &pending);
        let mut i = 0;
        while i < pending.len() {
            match poll_pending(&pending[i]) {
                None => i += 1,
                Some(done) => {
                    let p = pending.swap_remove(i);
                    let answer = finish(p, done);
                    if !send(&channel, answer) {
                        return end(role, 0);
                    }
                }
            }
        }
        if !request_ready {
            continue;
        }
        let got = match channel.recv(&mut buf, 0) {
            Ok(Some(got)) => got,
            Ok(None) => return end(role, 0),
            Err(RecvError::Io(e)) => {
                eprintln!("spacer-worker: receiving: {e}");
                return end(role, 1);
            }
            // A datagram the broker should never send: refuse it, keep serving.
            Err(e) => {
                let reply = WorkerReply::Invalid {
                    id: 0,
                    reason: e.to_string(),
                };
                if !send(&channel, (reply, Vec::new(), false)) {
                    return end(role, 0);
                }
                continue;
            }
        };
        let answer = match internal::decode::<WorkerRequest>(&buf[..got.len]) {
            Ok(req) => match handle(&mut maker, role, req) {
                Handled::Now(answer) => answer,
                Handled::Later(p) => {
                    pending.push(p);
                    continue;
                }
            },
            Err(e) => (
                WorkerReply::Invalid {
                    id: 0,
                    reason: e.to_string(),
                },
                Vec::new(),
                false,
            ),
        };
        let fatal = answer.2;
        if !send(&channel, answer) {
            return end(role, 0);
        }
        if fatal {
            eprintln!("spacer-worker: own namespaces may have changed; exiting");
            return end(role, 1);
        }
    }
}

/// Sends a reply; false if the other end is gone. Our copies of its fds
/// close right after.
fn send(channel: &Channel, (reply, fds, _): Answer) -> bool {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    channel.send(&internal::encode(&reply), &borrowed).is_ok()
}

/// Waits until a request or a pending setup needs attention, or the first
/// setup deadline passes. Returns whether a request can be read.
fn wait(channel: &Channel, pending: &[Pending]) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let now = std::time::Instant::now();
    let first = pending
        .iter()
        .map(|p| p.starting.deadline)
        .min()
        .unwrap_or(now);
    let ms = first.saturating_duration_since(now).as_millis().min(60_000) as i32;
    let mut fds = vec![PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
    for p in pending {
        fds.push(PollFd::new(p.starting.channel.as_fd(), PollFlags::POLLIN));
        fds.push(PollFd::new(p.starting.pidfd.as_fd(), PollFlags::POLLIN));
    }
    let _ = poll(
        &mut fds,
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::ZERO),
    );
    fds[0]
        .revents()
        .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
}

/// How a pending setup stands.
enum Done {
    /// Its `Ready` (or failure) can be read.
    Readable,
    /// Its worker ended before saying anything.
    Ended,
    /// Its deadline passed.
    Late,
}

fn poll_pending(p: &Pending) -> Option<Done> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [
        PollFd::new(p.starting.channel.as_fd(), PollFlags::POLLIN),
        PollFd::new(p.starting.pidfd.as_fd(), PollFlags::POLLIN),
    ];
    let _ = poll(&mut fds, PollTimeout::ZERO);
    let hit = |f: &PollFd<'_>| {
        f.revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
    };
    if hit(&fds[0]) {
        Some(Done::Readable)
    } else if hit(&fds[1]) {
        Some(Done::Ended)
    } else if std::time::Instant::now() >= p.starting.deadline {
        Some(Done::Late)
    } else {
        None
    }
}

fn finish(p: Pending, done: Done) -> Answer {
    let failed = |reason: String| (WorkerReply::Failed { id: p.id, reason }, Vec::new(), false);
    match done {
        Done::Readable => match p.starting.finish() {
            Ok(s) => {
                let reply = WorkerReply::Subspace {
                    id: p.id,
                    user: s.user.is_some(),
                    pid: s.pidns.is_some(),
                    worker_pid: s.pid,
                };
                let mut fds = vec![s.channel, s.pidfd];
                fds.extend(s.user);
                fds.extend(s.pidns);
                (reply, fds, false)
            }
            Err(e) => failed(e.to_string()),
        },
        Done::Ended => {
            p.starting.abandon();
            failed(SpawnError::Lost.to_string())
        }
        Done::Late => {
            p.starting.abandon();
            failed("the subspace worker did not get ready in time".into())
        }
    }
}

/// Leaving: a private worker takes its subspace workers, at any depth, with
/// it (and reaps them: nothing is left for init).
fn end(role: Role, code: i32) -> i32 {
    if role == Role::Private {
        sys::kill_descendants();
    }
    code
}

/// What became of a request.
enum Handled {
    /// Answered: the reply, its fds, and whether the worker must stop.
    Now(Answer),
    /// A subspace being set up; answered later.
    Later(Pending),
}

/// Answers one request, or starts a subspace.
fn handle(maker: &mut Maker, role: Role, req: WorkerRequest) -> Handled {
    match req {
        WorkerRequest::Rooms {
            id,
            spaces,
            options,
        } => {
            // The worker checks every request itself, whatever the broker did.
            let spaces = match check_spaces(spaces, Spaces::ROOMS) {
                Ok(s) => s,
                Err(e) => return Handled::Now(invalid(id, e.to_string())),
            };
            if let Err(e) = options.check(spaces) {
                return Handled::Now(invalid(id, e.to_string()));
            }
            if let Err(e) = crate::prepare::check_clocks(&options) {
                return Handled::Now(invalid(id, e));
            }
            Handled::Now(match maker.rooms(spaces, &options) {
                Ok(made) => {
                    let (types, fds): (Vec<_>, Vec<_>) = made.into_iter().unzip();
                    let inodes = fds
                        .iter()
                        .map(|f| fd::namespace_inode(f.as_fd()).unwrap_or(0))
                        .collect();
                    (WorkerReply::Rooms { id, types, inodes }, fds, false)
                }
                Err(e) => {
                    let mut reason = e.to_string();
                    if role == Role::Private
                        && e.is_permission()
                        && !nix::unistd::geteuid().is_root()
                    {
                        reason.push_str(
                            "; a private worker has only its caller's privileges: ask for a \
                             user subspace first and make rooms inside it",
                        );
                    }
                    (WorkerReply::Failed { id, reason }, Vec::new(), e.is_fatal())
                }
            })
        }
        WorkerRequest::Subspace {
            id,
            spaces,
            uid,
            gid,
        } => {
            let spaces = match check_spaces(spaces, Spaces::SUBSPACE) {
                Ok(s) => s,
                Err(e) => return Handled::Now(invalid(id, e.to_string())),
            };
            let ids = match role {
                Role::Host if uid == u32::MAX || gid == u32::MAX => {
                    return Handled::Now(invalid(id, "invalid requester ids".into()))
                }
                // Owned by the host's user namespace, it could be entered
                // only with CAP_SYS_ADMIN there, and its worker would serve
                // as host root for an unprivileged requester.
                Role::Host if uid != 0 && !spaces.contains(Spaces::USER) => {
                    return Handled::Now(invalid(
                        id,
                        "a PID subspace without a user namespace is for root only: ask for user and pid together".into(),
                    ))
                }
                Role::Host => Some((uid, gid)),
                Role::Private | Role::Subspace => None,
            };
            match subspace::start(spaces, ids) {
                Ok(starting) => Handled::Later(Pending { id, starting }),
                Err(e) => Handled::Now((
                    WorkerReply::Failed {
                        id,
                        reason: e.to_string(),
                    },
                    Vec::new(),
                    false,
                )),
            }
        }
    }
}

fn invalid(id: u64, reason: String) -> Answer {
    (WorkerReply::Invalid { id, reason }, Vec::new(), false)
}

/// The supervisor: starts serving workers on request (each a fork of this
/// process, so already confined) and kills hung ones. Serving workers are
/// reaped by the kernel (`SIGCHLD` ignored).
pub fn supervise(channel: Channel) -> i32 {
    let mut workers: Vec<(i32, OwnedFd)> = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let got = match channel.recv(&mut buf, 0) {
            Ok(Some(got)) => got,
            Ok(None) => return 0,
            Err(RecvError::Io(e)) => {
                eprintln!("spacer-worker: supervisor receiving: {e}");
                return 1;
            }
            Err(_) => continue,
        };
        match internal::decode::<SupervisorRequest>(&buf[..got.len]) {
            Ok(SupervisorRequest::Spawn) => {
                let reply = spawn_serving(&mut workers);
                let (msg, fds) = match reply {
                    Ok((pid, chan, pidfd)) => (SupervisorReply::Spawned { pid }, vec![chan, pidfd]),
                    Err(reason) => (SupervisorReply::Failed { reason }, Vec::new()),
                };
                let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
                if channel.send(&internal::encode(&msg), &borrowed).is_err() {
                    return 0;
                }
            }
            Ok(SupervisorRequest::Kill { pid }) => {
                if let Some(i) = workers.iter().position(|(p, _)| *p == pid) {
                    let (_, pidfd) = workers.swap_remove(i);
                    // ESRCH: it had already exited. Nothing else can fail here.
                    let _ = fd::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                }
            }
            Err(_) => {}
        }
    }
}

/// Forks a serving worker; returns its pid, the broker's end of its
/// channel and a pidfd (a duplicate stays here for `Kill`).
fn spawn_serving(workers: &mut Vec<(i32, OwnedFd)>) -> Result<(i32, OwnedFd, OwnedFd), String> {
    let (broker_end, worker_end) =
        Channel::pair().map_err(|e| format!("creating a worker channel: {e}"))?;
    match sys::clone_with_pidfd().map_err(|e| format!("starting a worker: {e}"))? {
        Cloned::Child => {
            drop(broker_end);
            sys::child_exit(|| {
                use std::os::fd::AsRawFd;
                if sys::close_fds_except(worker_end.as_raw_fd()).is_err() {
                    return 1;
                }
                serve(worker_end, Role::Host, None)
            })
        }
        Cloned::Parent { pid, pidfd } => {
            drop(worker_end);
            let for_broker = pidfd
                .try_clone()
                .map_err(|e| format!("duplicating a pidfd: {e}"))?;
            workers.push((pid, pidfd));
            Ok((pid, broker_end.into_fd(), for_broker))
        }
    }
}
