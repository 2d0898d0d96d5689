//! The request loop of a serving worker (room worker, spawner, private and
//! subspace workers): it answers [`WorkerRequest`]s in order.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use spacer_proto::internal::{self, Message, Trust, WorkerReply, WorkerRequest};
use spacer_proto::{check_spaces, fd, Channel, IdMaps, RecvError, Spaces};

use crate::maker::{Maker, RoomError};
use crate::privilege::{self, as_requester, with_cap};
use crate::subspace::{self, Requester};
use crate::sys;
use crate::Role;

/// A subspace being set up, and the request it answers.
struct Pending {
    id: u64,
    starting: subspace::Starting,
}

/// A reply, its fds, and whether the worker must stop after sending it
/// (its own namespaces may have changed).
struct Answer {
    reply: WorkerReply,
    fds: Vec<OwnedFd>,
    fatal: bool,
}

impl Answer {
    fn plain(reply: WorkerReply) -> Answer {
        Answer {
            reply,
            fds: Vec::new(),
            fatal: false,
        }
    }

    fn invalid(id: u64, reason: impl Into<String>) -> Answer {
        Answer::plain(WorkerReply::Invalid {
            id,
            reason: reason.into(),
        })
    }

    fn failed(id: u64, reason: impl ToString) -> Answer {
        Answer::plain(WorkerReply::Failed {
            id,
            reason: reason.to_string(),
        })
    }
}

/// A serving worker's state.
struct Server {
    role: Role,
    maker: Maker,
    pending: Vec<Pending>,
    /// The spawner's subspace workers, by pid, until the broker ends them.
    started: Vec<(i32, OwnedFd)>,
}

/// Serves requests on `channel` until the other end closes. Returns the
/// process's exit code.
///
/// Rooms are answered at once. A subspace request starts a subspace worker
/// and is answered when that worker is ready (or failed, or missed its
/// deadline); meanwhile the loop serves on. The broker matches replies to
/// requests by id. `offsets_file`: a subspace worker's time offsets file,
/// opened during its setup.
pub fn serve(channel: Channel, role: Role, offsets_file: Option<std::fs::File>) -> i32 {
    let maker = match Maker::new(offsets_file) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("spacer-worker: {e}");
            return 1;
        }
    };
    let mut server = Server {
        role,
        maker,
        pending: Vec::new(),
        started: Vec::new(),
    };
    let code = server.run(&channel);
    server.end();
    code
}

impl Server {
    fn run(&mut self, channel: &Channel) -> i32 {
        let mut buf = vec![0u8; internal::MAX_BYTES];
        // Only the spawner (a parent user namespace, the requesting
        // process's pidfd) and a room worker (that pidfd) take fds.
        let max_fds = match self.role {
            Role::Spawner => 2,
            Role::Rooms => 1,
            _ => 0,
        };
        loop {
            if privilege::tainted() {
                return 1;
            }
            // With nothing pending, block in recv (no extra syscall per
            // request).
            let request_ready = self.pending.is_empty() || self.wait(channel);
            let mut i = 0;
            while i < self.pending.len() {
                match poll_pending(&self.pending[i]) {
                    None => i += 1,
                    Some(done) => {
                        let p = self.pending.swap_remove(i);
                        let answer = self.finish(p, done);
                        if !send(channel, answer) {
                            return 0;
                        }
                    }
                }
            }
            if !request_ready {
                continue;
            }
            let answer = match channel.recv(&mut buf, max_fds) {
                Ok(Some(got)) => {
                    let decoded = internal::decode::<WorkerRequest>(&buf[..got.len]);
                    // Nothing of a request stays in this buffer, which the
                    // next fork would copy.
                    buf[..got.len].fill(0);
                    match decoded {
                        // The broker's fds are checked by kind: the worker
                        // trusts it no more than a request's words.
                        Ok(req) if !req.fds_match(&got.fds, Trust::Kinds) => {
                            Answer::invalid(req.id(), "the fds do not match the request")
                        }
                        Ok(req) => match self.handle(req, got.fds) {
                            Some(answer) => answer,
                            None => continue,
                        },
                        Err(e) => Answer::invalid(0, e.to_string()),
                    }
                }
                Ok(None) => return 0,
                Err(RecvError::Io(e)) => {
                    eprintln!("spacer-worker: receiving: {e}");
                    return 1;
                }
                // A datagram the broker should never send: refuse it, serve on.
                Err(e) => Answer::invalid(0, e.to_string()),
            };
            let fatal = answer.fatal;
            if !send(channel, answer) {
                return 0;
            }
            if fatal {
                eprintln!("spacer-worker: own namespaces may have changed; exiting");
                return 1;
            }
        }
    }

    /// Leaving: a private worker takes its subspace workers, at any depth,
    /// with it (and reaps them: nothing is left for init); the spawner ends
    /// every subspace worker it started (the broker has gone).
    fn end(&mut self) {
        for p in self.pending.drain(..) {
            p.starting.abandon();
        }
        match self.role {
            Role::Private => sys::kill_descendants(),
            Role::Spawner => {
                for (_, pidfd) in &self.started {
                    privilege::kill(pidfd.as_fd());
                }
            }
            _ => {}
        }
    }

    /// Waits until a request or a pending setup needs attention, or the
    /// first setup deadline passes. Returns whether a request can be read.
    fn wait(&self, channel: &Channel) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let now = std::time::Instant::now();
        let first = self
            .pending
            .iter()
            .map(|p| p.starting.deadline)
            .min()
            .unwrap_or(now);
        let ms = first.saturating_duration_since(now).as_millis().min(60_000) as i32;
        let mut fds = vec![PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
        for p in &self.pending {
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

    fn finish(&mut self, p: Pending, done: Done) -> Answer {
        let id = p.id;
        let s = match done {
            Done::Readable => match p.starting.finish() {
                Ok(s) => s,
                Err(e) => return Answer::failed(id, e),
            },
            Done::Ended => {
                p.starting.abandon();
                return Answer::failed(id, subspace::LOST);
            }
            Done::Late => {
                p.starting.abandon();
                return Answer::failed(id, "the subspace worker did not get ready in time");
            }
        };
        if self.role == Role::Spawner {
            // The spawner keeps a pidfd to end it with.
            match s.pidfd.try_clone() {
                Ok(dup) => self.started.push((s.pid, dup)),
                Err(e) => {
                    privilege::kill(s.pidfd.as_fd());
                    return Answer::failed(id, format!("keeping the subspace worker's pidfd: {e}"));
                }
            }
        }
        let reply = WorkerReply::Subspace {
            id,
            user: s.user.is_some(),
            pid: s.pidns.is_some(),
            worker_pid: s.pid,
        };
        let mut fds = vec![s.channel, s.pidfd];
        fds.extend(s.user);
        fds.extend(s.pidns);
        Answer {
            reply,
            fds,
            fatal: false,
        }
    }

    /// Answers one request (`None`: a subspace is being set up, answered
    /// later). `fds`: what came with the request.
    fn handle(&mut self, req: WorkerRequest, fds: Vec<OwnedFd>) -> Option<Answer> {
        let role = self.role;
        Some(match req {
            WorkerRequest::Rooms { id, .. } if role == Role::Spawner => {
                Answer::invalid(id, "the spawner makes no rooms")
            }
            WorkerRequest::Rooms {
                id,
                spaces,
                options,
                uid,
                ..
            } => self.rooms(id, spaces, &options, uid, fds.first()),
            WorkerRequest::Alive { id, nstype, rooms } => {
                if role != Role::Rooms {
                    return Some(Answer::invalid(id, "only a room worker counts rooms"));
                }
                if rooms.len() > internal::MAX_ALIVE {
                    return Some(Answer::invalid(id, "too many rooms asked about"));
                }
                // An error other than "gone" counts the room as alive: a cap
                // errs on the side of the host.
                let alive = rooms
                    .into_iter()
                    .map(|r| sys::namespace_alive(&fd::handle_bytes(nstype, r)).unwrap_or(true))
                    .collect();
                Answer::plain(WorkerReply::Alive { id, alive })
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
                let checked = check_spaces(spaces, Spaces::SUBSPACE)
                    .map_err(|e| e.to_string())
                    .and_then(|spaces| {
                        check_maps(maps.as_ref(), spaces, role, parent, uid, gid)?;
                        let requester = self.requester(spaces, uid, gid, parent, caller, fds)?;
                        Ok((spaces, requester))
                    });
                let (spaces, requester) = match checked {
                    Ok(c) => c,
                    Err(reason) => return Some(Answer::invalid(id, reason)),
                };
                match subspace::start(spaces, requester, maps, serve) {
                    Ok(starting) => {
                        self.pending.push(Pending { id, starting });
                        return None;
                    }
                    Err(e) => Answer::failed(id, e),
                }
            }
            WorkerRequest::End { id, pid } => {
                if role != Role::Spawner {
                    return Some(Answer::invalid(id, "only the spawner ends subspaces"));
                }
                if let Some(i) = self.started.iter().position(|(p, _)| *p == pid) {
                    let (_, pidfd) = self.started.swap_remove(i);
                    // SIGKILL ends a stopped or traced process too. It is
                    // reaped by the kernel (SIGCHLD is ignored).
                    privilege::kill(pidfd.as_fd());
                }
                Answer::plain(WorkerReply::Ended { id })
            }
        })
    }

    fn rooms(
        &mut self,
        id: u64,
        spaces: u64,
        options: &spacer_proto::RoomOptions,
        uid: u32,
        requester: Option<&OwnedFd>,
    ) -> Answer {
        // The worker checks every request itself, whatever the broker did.
        let spaces = match check_spaces(spaces, Spaces::ROOMS) {
            Ok(s) => s,
            Err(e) => return Answer::invalid(id, e.to_string()),
        };
        if let Err(e) = options.check(spaces) {
            return Answer::invalid(id, e.to_string());
        }
        if let Err(e) = crate::prepare::check_clocks(options) {
            return Answer::invalid(id, e.to_string());
        }
        let requester = requester.map(|f| f.as_fd());
        // A room worker makes them as the requester's effective uid, so the
        // kernel charges them to the requester's namespace limits.
        let charged_to = (self.role == Role::Rooms && uid != 0).then_some(uid);
        // Joining the requester's mount and UTS namespaces through its
        // pidfd takes CAP_SYS_PTRACE: raised once for the request.
        let make = |maker: &mut Maker| -> Result<_, RoomError> {
            match requester {
                Some(_) => with_cap(caps::Capability::CAP_SYS_PTRACE, || {
                    maker.rooms(spaces, options, requester)
                })?,
                None => maker.rooms(spaces, options, None),
            }
        };
        let made = as_requester(charged_to, || make(&mut self.maker))
            .map_err(RoomError::from)
            .and_then(|r| r);
        match made {
            Ok(made) => {
                let (types, fds): (Vec<_>, Vec<_>) = made.into_iter().unzip();
                let inodes = fds
                    .iter()
                    .map(|f| fd::namespace_inode(f.as_fd()).unwrap_or(0))
                    .collect();
                Answer {
                    reply: WorkerReply::Rooms { id, types, inodes },
                    fds,
                    fatal: false,
                }
            }
            Err(e) => {
                let fatal = e.fatal;
                let mut reason = e.error.to_string();
                if self.role == Role::Private
                    && e.error.errno() == Some(nix::errno::Errno::EPERM)
                    && !nix::unistd::geteuid().is_root()
                {
                    reason.push_str(
                        "; a private worker has only its caller's privileges: ask for a \
                         user subspace first and make rooms inside it",
                    );
                }
                Answer {
                    fatal,
                    ..Answer::failed(id, reason)
                }
            }
        }
    }

    /// Who a subspace is for, as this worker's role allows (`fds`: the
    /// parent user namespace and the requester's pidfd, as announced).
    fn requester(
        &self,
        spaces: Spaces,
        uid: u32,
        gid: u32,
        parent: bool,
        caller: bool,
        fds: Vec<OwnedFd>,
    ) -> Result<Requester, String> {
        match self.role {
            Role::Spawner => {}
            Role::Private | Role::Subspace => return Ok(Requester::Own),
            _ => return Err("subspaces are started by the service's spawner".into()),
        }
        // (uid_t)-1 means "leave as it is" to setresuid.
        if uid == u32::MAX || gid == u32::MAX {
            return Err("invalid requester ids".into());
        }
        // Owned by the host's user namespace, it could be entered only with
        // CAP_SYS_ADMIN there, and its worker would serve as host root for
        // an unprivileged requester.
        if uid != 0 && !parent && !spaces.contains(Spaces::USER) {
            return Err(
                "a PID subspace without a user namespace is for root only: ask for user and pid together"
                    .into(),
            );
        }
        // Their kinds were checked with the request (fds_match).
        let mut fds = fds.into_iter();
        let parent = if parent { fds.next() } else { None };
        let caller = if caller { fds.next() } else { None };
        Ok(Requester::Host {
            uid,
            gid,
            parent,
            caller,
        })
    }
}

/// Sends a reply; false if the other end is gone. Our copies of its fds
/// close right after.
fn send(channel: &Channel, answer: Answer) -> bool {
    let borrowed: Vec<BorrowedFd<'_>> = answer.fds.iter().map(|f| f.as_fd()).collect();
    channel.send_msg(&answer.reply, &borrowed).is_ok()
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
) -> Result<(), String> {
    let Some(maps) = maps else { return Ok(()) };
    let refuse = |why: &str| Err(why.to_owned());
    if !spaces.contains(Spaces::USER) {
        return refuse("id maps need a new user namespace");
    }
    let (uid, gid) = match role {
        Role::Spawner if parent => return refuse("id maps are for first-level subspaces only"),
        Role::Spawner => (uid, gid),
        Role::Private if !maps.has_subordinate_ids() => (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        ),
        Role::Private => return refuse("subordinate ids are mapped by the broker's spawner only"),
        _ => return refuse("id maps are for first-level subspaces only"),
    };
    maps.check(uid, gid).map_err(str::to_owned)
}
