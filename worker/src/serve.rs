//! The request loops: a serving worker (host or subspace) answers
//! [`WorkerRequest`]s in order; the supervisor starts and stops serving
//! workers for the broker.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use spacer_proto::internal::{
    self, SupervisorReply, SupervisorRequest, WorkerKind, WorkerReply, WorkerRequest,
};
use spacer_proto::{check_spaces, fd, Channel, IdMaps, NsType, RecvError, Spaces};

use crate::maker::Maker;
use crate::subspace::{self, Requester, SpawnError};
use crate::sys::{self, Cloned};

/// Which worker this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Making rooms in the host's namespaces for the broker.
    Host,
    /// Starting every subspace worker for the broker, at any depth (the
    /// *spawner*); it sees no room request, and ends the subspace workers
    /// it started when asked to or when the broker goes.
    Spawner,
    /// Serving a client library directly (private mode), with that
    /// process's own privileges: never switches ids; when its client goes,
    /// it ends every subspace worker below it.
    Private,
    /// Serving inside a subspace of a private worker: already the
    /// requester; starts nested subspaces itself.
    Subspace,
    /// Serving inside a subspace the spawner started: already the
    /// requester; nested subspaces are the spawner's job.
    HostSubspace,
}

/// A subspace being set up, and the request it answers.
struct Pending {
    id: u64,
    starting: subspace::Starting,
    /// Whether to keep its pidfd (the spawner does).
    keep: bool,
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
    // The spawner's subspace workers, by pid, until the broker ends them.
    let mut started: Vec<(i32, OwnedFd)> = Vec::new();
    // Only the spawner (a parent user namespace, the requesting process's
    // pidfd) and a room worker (that pidfd) take fds with a request.
    let max_fds = match role {
        Role::Spawner => 2,
        Role::Host => 1,
        _ => 0,
    };
    loop {
        // With nothing pending, block in recv (no extra syscall per request).
        let request_ready = pending.is_empty() || wait(&channel, &pending);
        let mut i = 0;
        while i < pending.len() {
            match poll_pending(&pending[i]) {
                None => i += 1,
                Some(done) => {
                    let p = pending.swap_remove(i);
                    let answer = finish(p, done, &mut started);
                    if !send(&channel, answer) {
                        return end(role, 0, &started);
                    }
                }
            }
        }
        if !request_ready {
            continue;
        }
        let got = match channel.recv(&mut buf, max_fds) {
            Ok(Some(got)) => got,
            Ok(None) => return end(role, 0, &started),
            Err(RecvError::Io(e)) => {
                eprintln!("spacer-worker: receiving: {e}");
                return end(role, 1, &started);
            }
            // A datagram the broker should never send: refuse it, keep serving.
            Err(e) => {
                let reply = WorkerReply::Invalid {
                    id: 0,
                    reason: e.to_string(),
                };
                if !send(&channel, (reply, Vec::new(), false)) {
                    return end(role, 0, &started);
                }
                continue;
            }
        };
        let decoded = internal::decode::<WorkerRequest>(&buf[..got.len]);
        // Nothing of a request stays in this buffer, which the next fork
        // would copy.
        buf[..got.len].fill(0);
        let answer = match decoded {
            Ok(req) => match handle(&mut maker, role, req, got.fds, &mut started) {
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
            return end(role, 0, &started);
        }
        if fatal {
            eprintln!("spacer-worker: own namespaces may have changed; exiting");
            return end(role, 1, &started);
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

fn finish(p: Pending, done: Done, started: &mut Vec<(i32, OwnedFd)>) -> Answer {
    let failed = |reason: String| (WorkerReply::Failed { id: p.id, reason }, Vec::new(), false);
    let keep = p.keep;
    match done {
        Done::Readable => match p.starting.finish() {
            Ok(s) => {
                if keep {
                    // The spawner keeps a pidfd to end it with.
                    match s.pidfd.try_clone() {
                        Ok(dup) => started.push((s.pid, dup)),
                        Err(e) => {
                            crate::confine::kill(s.pidfd.as_fd());
                            return failed(format!("keeping the subspace worker's pidfd: {e}"));
                        }
                    }
                }
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

/// The worker's own check of a subspace's id maps, whatever the broker
/// said: only with a new user namespace, only at the first level (a nested
/// map would name the parent subspace's ids), subordinate ids only from the
/// spawner, and every line as [`IdMaps::check`] wants it for the requester
/// (a private worker's requester is itself).
fn check_maps(
    maps: Option<&IdMaps>,
    spaces: Spaces,
    role: Role,
    parent: bool,
    uid: u32,
    gid: u32,
) -> Result<(), &'static str> {
    let Some(maps) = maps else { return Ok(()) };
    if !spaces.contains(Spaces::USER) {
        return Err("id maps need a new user namespace");
    }
    let (uid, gid) = match role {
        Role::Spawner if parent => return Err("id maps are for first-level subspaces only"),
        Role::Spawner => (uid, gid),
        Role::Private if !maps.has_subordinate_ids() => (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        ),
        Role::Private => return Err("subordinate ids are mapped by the broker's spawner only"),
        _ => return Err("id maps are for first-level subspaces only"),
    };
    maps.check(uid, gid)
}

/// Leaving: a private worker takes its subspace workers, at any depth, with
/// it (and reaps them: nothing is left for init); the spawner ends every
/// subspace worker it started (the broker has gone).
fn end(role: Role, code: i32, started: &[(i32, OwnedFd)]) -> i32 {
    match role {
        Role::Private => sys::kill_descendants(),
        Role::Spawner => {
            for (_, pidfd) in started {
                crate::confine::kill(pidfd.as_fd());
            }
        }
        _ => {}
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

/// Answers one request, or starts a subspace. `fds`: what came with the
/// request (the spawner takes one, a parent user namespace).
fn handle(
    maker: &mut Maker,
    role: Role,
    req: WorkerRequest,
    fds: Vec<OwnedFd>,
    started: &mut Vec<(i32, OwnedFd)>,
) -> Handled {
    let id = req.id();
    let wants_fds = match req {
        WorkerRequest::Subspace { parent, caller, .. } if role == Role::Spawner => {
            usize::from(parent) + usize::from(caller)
        }
        WorkerRequest::Rooms { caller: true, .. } if role == Role::Host => 1,
        _ => 0,
    };
    if fds.len() != wants_fds {
        return Handled::Now(invalid(id, "unexpected fds with the request".into()));
    }
    match req {
        WorkerRequest::Rooms { .. } if role == Role::Spawner => {
            Handled::Now(invalid(id, "the spawner makes no rooms".into()))
        }
        WorkerRequest::Alive { id, nstype, rooms } => {
            if role != Role::Host {
                return Handled::Now(invalid(id, "only a room worker counts rooms".into()));
            }
            if rooms.len() > internal::MAX_ALIVE {
                return Handled::Now(invalid(id, "too many rooms asked about".into()));
            }
            // An error other than "gone" counts the room as alive: a cap
            // errs on the side of the host.
            let alive = rooms
                .into_iter()
                .map(|r| sys::namespace_alive(&fd::handle_bytes(nstype, r)).unwrap_or(true))
                .collect();
            Handled::Now((WorkerReply::Alive { id, alive }, Vec::new(), false))
        }
        WorkerRequest::Rooms {
            id,
            spaces,
            options,
            uid,
            ..
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
            // A room worker makes them as the requester's effective uid, so
            // the kernel charges them to the requester's namespace limits.
            let charged_to = (role == Role::Host && uid != 0).then_some(uid);
            let requester = fds.first();
            if requester.is_some_and(|f| !fd::is_pidfd(f.as_fd())) {
                return Handled::Now(invalid(id, "the requester's fd is no pidfd".into()));
            }
            let requester = requester.map(|f| f.as_fd());
            // Joining the requester's mount and UTS namespaces through its
            // pidfd takes CAP_SYS_PTRACE: raised once for the request.
            let rooms = || match requester {
                Some(_) => crate::prepare::with_cap(caps::Capability::CAP_SYS_PTRACE, || {
                    maker.rooms(spaces, &options, requester)
                })
                .unwrap_or_else(|e| Err(crate::maker::MakeError::Option(NsType::Mnt, e))),
                None => maker.rooms(spaces, &options, None),
            };
            let made = match as_requester(charged_to, rooms) {
                Ok(made) => made,
                Err(reason) => {
                    return Handled::Now((WorkerReply::Failed { id, reason }, Vec::new(), false))
                }
            };
            Handled::Now(match made {
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
            parent,
            caller,
            maps,
        } => {
            let spaces = match check_spaces(spaces, Spaces::SUBSPACE) {
                Ok(s) => s,
                Err(e) => return Handled::Now(invalid(id, e.to_string())),
            };
            if let Err(reason) = check_maps(maps.as_ref(), spaces, role, parent, uid, gid) {
                return Handled::Now(invalid(id, reason.into()));
            }
            let requester = match role {
                Role::Host | Role::HostSubspace => {
                    return Handled::Now(invalid(
                        id,
                        "subspaces are started by the service's spawner".into(),
                    ))
                }
                Role::Spawner if uid == u32::MAX || gid == u32::MAX => {
                    return Handled::Now(invalid(id, "invalid requester ids".into()))
                }
                // Owned by the host's user namespace, it could be entered
                // only with CAP_SYS_ADMIN there, and its worker would serve
                // as host root for an unprivileged requester.
                Role::Spawner if uid != 0 && !parent && !spaces.contains(Spaces::USER) => {
                    return Handled::Now(invalid(
                        id,
                        "a PID subspace without a user namespace is for root only: ask for user and pid together".into(),
                    ))
                }
                Role::Spawner => {
                    let mut fds = fds.into_iter();
                    let parent = if parent { fds.next() } else { None };
                    let caller = if caller { fds.next() } else { None };
                    if let Some(p) = &parent {
                        if fd::namespace_type(p.as_fd()).ok() != Some(NsType::User) {
                            return Handled::Now(invalid(
                                id,
                                "the parent namespace is not a user namespace".into(),
                            ));
                        }
                    }
                    if caller.as_ref().is_some_and(|c| !fd::is_pidfd(c.as_fd())) {
                        return Handled::Now(invalid(id, "the requester's fd is no pidfd".into()));
                    }
                    Requester::Host {
                        uid,
                        gid,
                        parent,
                        caller,
                    }
                }
                Role::Private | Role::Subspace => Requester::Own,
            };
            match subspace::start(spaces, requester, maps) {
                Ok(starting) => Handled::Later(Pending {
                    id,
                    starting,
                    keep: role == Role::Spawner,
                }),
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
        WorkerRequest::End { id, pid } => {
            if role != Role::Spawner {
                return Handled::Now(invalid(id, "only the spawner ends subspaces".into()));
            }
            if let Some(i) = started.iter().position(|(p, _)| *p == pid) {
                let (_, pidfd) = started.swap_remove(i);
                // SIGKILL ends a stopped or traced process too. It is
                // reaped by the kernel (SIGCHLD is ignored).
                crate::confine::kill(pidfd.as_fd());
            }
            Handled::Now((WorkerReply::Ended { id }, Vec::new(), false))
        }
    }
}

/// Runs `f` with `uid` (if any) as the effective uid, the filesystem uid
/// staying 0 (the worker's own `/proc/self` files are root's) and the
/// capabilities kept (`SECBIT_NO_SETUID_FIXUP`, set at start). The worker
/// must be back to effective uid 0 afterwards, or it exits.
fn as_requester<T>(uid: Option<u32>, f: impl FnOnce() -> T) -> Result<T, String> {
    use nix::unistd::{setfsuid, setresuid, Uid};
    let Some(uid) = uid else { return Ok(f()) };
    let keep = Uid::from_raw(u32::MAX);
    setresuid(keep, Uid::from_raw(uid), keep).map_err(|e| {
        format!(
            "taking the requester's uid: {}",
            crate::maker::errno_text(e)
        )
    })?;
    setfsuid(Uid::from_raw(0));
    let out = f();
    if setresuid(keep, Uid::from_raw(0), keep).is_err() {
        eprintln!("spacer-worker: cannot return to uid 0; exiting");
        std::process::exit(1);
    }
    Ok(out)
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
            Ok(SupervisorRequest::Spawn { kind }) => {
                let reply = spawn_serving(&mut workers, kind);
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
fn spawn_serving(
    workers: &mut Vec<(i32, OwnedFd)>,
    kind: WorkerKind,
) -> Result<(i32, OwnedFd, OwnedFd), String> {
    let (broker_end, worker_end) =
        Channel::pair().map_err(|e| format!("creating a worker channel: {e}"))?;
    match sys::clone_with_pidfd().map_err(|e| format!("starting a worker: {e}"))? {
        Cloned::Child => {
            drop(broker_end);
            sys::child_exit(|| {
                use std::os::fd::AsRawFd;
                if sys::close_fds_except(&[worker_end.as_raw_fd()]).is_err() {
                    return 1;
                }
                let role = match kind {
                    WorkerKind::Rooms => Role::Host,
                    WorkerKind::Subspaces => {
                        // Told apart in `ps` (and by the tests).
                        let _ = nix::sys::prctl::set_name(c"spacer-spawner");
                        Role::Spawner
                    }
                };
                serve(worker_end, role, None)
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
