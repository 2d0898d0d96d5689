//! A serving worker's loop (room worker, spawner, subspace workers; and
//! private mode's, whose [`Part`] is in `spacer-private-worker`): rooms
//! are answered at once, a subspace once its worker is ready (or failed,
//! or missed its deadline) while the loop serves on. Replies carry their
//! request's id. Here too: what the daemon's [`Role`]s allow.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use caps::Capability;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use spacer_core::internal::{self, Message, Trust, WorkerReply, WorkerRequest};
use spacer_core::{check_spaces, fd, Channel, IdMaps, RecvError, RoomOptions, Spaces};

use crate::maker::{check_clocks, Maker, Offsets};
use crate::privilege::{self, as_requester, with_cap};
use crate::subspace::{self, NsFds, Requester, Starting};
use crate::sys::{self, Error};
use crate::{Part, Role};

/// A reply and its fds.
type Answer = (WorkerReply, Vec<OwnedFd>);

fn invalid(id: u64, reason: impl ToString) -> Answer {
    (
        WorkerReply::Invalid {
            id,
            reason: reason.to_string(),
        },
        Vec::new(),
    )
}

fn failed(id: u64, reason: impl ToString) -> Answer {
    (
        WorkerReply::Failed {
            id,
            reason: reason.to_string(),
        },
        Vec::new(),
    )
}

/// A serving worker's state.
struct Server<P> {
    role: P,
    maker: Maker,
    /// Subspaces being set up, by request id.
    pending: Vec<(u64, Starting)>,
    /// The spawner's subspace workers, by pid, until the broker ends them.
    started: Vec<(i32, OwnedFd)>,
}

/// Serves requests on `channel` until the other end closes; returns the
/// exit code. `offsets_file`: a subspace worker's, opened during its setup.
pub fn serve<P: Part>(channel: Channel, role: P, offsets_file: Option<File>) -> i32 {
    let offsets = match offsets_file {
        Some(file) => Offsets::Opened(file),
        None if role.offsets_on_request() => Offsets::OnRequest,
        None => Offsets::Missing,
    };
    let mut server = match Maker::new(offsets) {
        Ok(maker) => Server {
            role,
            maker,
            pending: Vec::new(),
            started: Vec::new(),
        },
        Err(e) => {
            eprintln!("spacer-worker: {e}");
            return 1;
        }
    };
    let code = server.run(&channel);
    server.end();
    code
}

/// Adds `role`'s seccomp filter (a forked worker's), then serves.
pub fn narrow_and_serve<P: Part>(channel: Channel, role: P, offsets_file: Option<File>) -> i32 {
    if let Err(e) = crate::seccomp::narrow(role) {
        eprintln!("spacer-worker: installing the {role:?} filter: {e}");
        return 1;
    }
    serve(channel, role, offsets_file)
}

impl<P: Part> Server<P> {
    fn run(&mut self, channel: &Channel) -> i32 {
        let mut buf = vec![0u8; internal::MAX_BYTES];
        let max_fds = self.role.max_fds();
        while !privilege::tainted() {
            // With nothing pending, block in recv (no extra syscall).
            let request_ready = self.pending.is_empty() || self.wait(channel);
            let mut i = 0;
            while i < self.pending.len() {
                let Some(ready) = poll_pending(&self.pending[i].1) else {
                    i += 1;
                    continue;
                };
                let (id, starting) = self.pending.swap_remove(i);
                if !send(channel, self.finish(id, starting, ready)) {
                    return 0;
                }
            }
            if !request_ready {
                continue;
            }
            let answer = match channel.recv(&mut buf, max_fds) {
                Ok(Some(got)) => {
                    let decoded = internal::decode::<WorkerRequest>(&buf[..got.len]);
                    // Nothing of a request stays here for the next fork to copy.
                    buf[..got.len].fill(0);
                    match decoded {
                        // By kind: the broker is trusted no more than its words.
                        Ok(req) if !req.fds_match(&got.fds, Trust::Kinds) => {
                            invalid(req.id(), "the fds do not match the request")
                        }
                        Ok(req) => match self.handle(req, got.fds) {
                            Some(answer) => answer,
                            None => continue,
                        },
                        Err(e) => invalid(0, e),
                    }
                }
                Ok(None) => return 0,
                Err(RecvError::Io(e)) => {
                    eprintln!("spacer-worker: receiving: {e}");
                    return 1;
                }
                // A datagram the broker should never send: refuse it, serve on.
                Err(e) => invalid(0, e),
            };
            if !send(channel, answer) {
                return 0;
            }
        }
        1
    }

    /// Leaving: the spawner ends every subspace worker it started; the
    /// part's own leaving after (a private worker takes its subspace
    /// workers, at any depth, with it).
    fn end(&mut self) {
        self.pending
            .drain(..)
            .for_each(|(_, starting)| starting.abandon());
        self.started
            .iter()
            .for_each(|(_, p)| privilege::kill(p.as_fd()));
        self.role.leave();
    }

    /// Waits until a request or a pending setup needs attention, or the
    /// first setup deadline passes. Returns whether a request can be read.
    fn wait(&self, channel: &Channel) -> bool {
        let now = Instant::now();
        let first = self
            .pending
            .iter()
            .map(|(_, s)| s.deadline)
            .min()
            .unwrap_or(now);
        let ms = first.saturating_duration_since(now).as_millis().min(60_000) as i32;
        let mut fds = vec![PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
        for (_, s) in &self.pending {
            fds.push(PollFd::new(s.channel.as_fd(), PollFlags::POLLIN));
            fds.push(PollFd::new(s.pidfd.as_fd(), PollFlags::POLLIN));
        }
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::ZERO),
        );
        readable(&fds[0])
    }

    /// Answers a subspace request once its setup has an outcome.
    fn finish(&mut self, id: u64, starting: Starting, ready: Result<NsFds, Error>) -> Answer {
        let (user, pidns) = match ready {
            Ok(fds) => fds,
            Err(e) => {
                starting.abandon();
                return failed(id, e);
            }
        };
        if self.role.ends_subspaces() {
            // The spawner keeps a pidfd to end it with.
            match starting.pidfd.try_clone() {
                Ok(dup) => self.started.push((starting.pid, dup)),
                Err(e) => {
                    starting.abandon();
                    return failed(id, format!("keeping the subspace worker's pidfd: {e}"));
                }
            }
        }
        let (user_made, pid) = (user.is_some(), pidns.is_some());
        let reply = WorkerReply::Subspace {
            id,
            user: user_made,
            pid,
            worker_pid: starting.pid,
        };
        let mut fds = vec![starting.channel.into_fd(), starting.pidfd];
        fds.extend(user.into_iter().chain(pidns));
        (reply, fds)
    }

    /// Answers one request (`None`: a subspace is being set up, answered
    /// later). `fds`: what came with it.
    fn handle(&mut self, req: WorkerRequest, fds: Vec<OwnedFd>) -> Option<Answer> {
        if let Some(why) = self.role.refuses(&req) {
            return Some(invalid(req.id(), why));
        }
        Some(match req {
            WorkerRequest::Rooms {
                id,
                spaces,
                options,
                uid,
                ..
            } => self.rooms(id, spaces, &options, uid, fds.first().map(|f| f.as_fd())),
            WorkerRequest::Alive { id, rooms, .. } if rooms.len() > internal::MAX_ALIVE => {
                invalid(id, "too many rooms asked about")
            }
            WorkerRequest::Alive { id, nstype, rooms } => {
                // Errors other than "gone" count as alive ("Bounded resources").
                let alive = |r| sys::namespace_alive(&fd::handle_bytes(nstype, r)).unwrap_or(true);
                (
                    WorkerReply::Alive {
                        id,
                        alive: rooms.into_iter().map(alive).collect(),
                    },
                    vec![],
                )
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
                let (spaces, requester) =
                    match self.requester(spaces, (uid, gid), parent, caller, maps.as_ref(), fds) {
                        Ok(checked) => checked,
                        Err(reason) => return Some(invalid(id, reason)),
                    };
                let part = self.role.subspace();
                match subspace::start(spaces, requester, maps, part, narrow_and_serve) {
                    Ok(starting) => {
                        self.pending.push((id, starting));
                        return None;
                    }
                    Err(e) => failed(id, e),
                }
            }
            WorkerRequest::End { id, pid } => {
                if let Some(i) = self.started.iter().position(|(p, _)| *p == pid) {
                    // Ends a stopped or traced process too; SIGCHLD is ignored.
                    privilege::kill(self.started.swap_remove(i).1.as_fd());
                }
                (WorkerReply::Ended { id }, Vec::new())
            }
        })
    }

    fn rooms(
        &mut self,
        id: u64,
        spaces: u64,
        options: &RoomOptions,
        uid: u32,
        requester: Option<BorrowedFd<'_>>,
    ) -> Answer {
        // The worker checks every request itself, whatever the broker did.
        let checked = check_spaces(spaces, Spaces::ROOMS)
            .map_err(|e| e.to_string())
            .and_then(|s| options.check(s).map(|()| s).map_err(|e| e.to_string()))
            .and_then(|s| check_clocks(options).map(|()| s).map_err(|e| e.to_string()));
        let spaces = match checked {
            Ok(s) => s,
            Err(e) => return invalid(id, e),
        };
        // A room worker makes them as the requester's effective uid, so the
        // kernel charges them to the requester.
        let charged_to = (self.role.charges_requester() && uid != 0).then_some(uid);
        let maker = &mut self.maker;
        let made = as_requester(charged_to, || match requester {
            // Joining another process's namespaces by pidfd.
            Some(_) => with_cap(Capability::CAP_SYS_PTRACE, || {
                maker.rooms(spaces, options, requester)
            })
            .and_then(|r| r),
            None => maker.rooms(spaces, options, None),
        })
        .and_then(|r| r);
        match made {
            Ok(made) => {
                let (types, fds): (Vec<_>, Vec<_>) = made.into_iter().unzip();
                let inode = |f: &OwnedFd| fd::namespace_inode(f.as_fd()).unwrap_or(0);
                let inodes = fds.iter().map(inode).collect();
                (WorkerReply::Rooms { id, types, inodes }, fds)
            }
            Err(e) => failed(id, self.role.room_error(e)),
        }
    }

    /// Checks a subspace request as this worker's part allows, and says
    /// who it is for. `fds`: the parent user namespace and the requester's
    /// pidfd, as announced (their kinds checked with the request).
    fn requester(
        &self,
        spaces: u64,
        ids: (u32, u32),
        parent: bool,
        caller: bool,
        maps: Option<&IdMaps>,
        fds: Vec<OwnedFd>,
    ) -> Result<(Spaces, Requester), String> {
        let spaces = check_spaces(spaces, Spaces::SUBSPACE).map_err(|e| e.to_string())?;
        if maps.is_some() && !spaces.contains(Spaces::USER) {
            return Err("id maps need a new user namespace".into());
        }
        let requester = self
            .role
            .requester(spaces, ids, (parent, caller), maps, fds)?;
        Ok((spaces, requester))
    }
}

impl Part for Role {
    const DAEMON: bool = true;

    fn calls(self) -> Vec<crate::seccomp::Entry> {
        crate::seccomp::calls(self)
    }

    fn tree(self) -> &'static [Role] {
        crate::seccomp::tree(self)
    }

    fn subspace(self) -> Role {
        Role::HostSubspace
    }

    /// The spawner takes a parent user namespace and the requester's
    /// pidfd, a room worker that pidfd.
    fn max_fds(self) -> usize {
        match self {
            Role::Spawner => 2,
            Role::Rooms => 1,
            _ => 0,
        }
    }

    fn refuses(self, req: &WorkerRequest) -> Option<&'static str> {
        match req {
            WorkerRequest::Rooms { .. } if self == Role::Spawner => {
                Some("the spawner makes no rooms")
            }
            WorkerRequest::Alive { .. } if self != Role::Rooms => {
                Some("only a room worker counts rooms")
            }
            WorkerRequest::End { .. } if self != Role::Spawner => {
                Some("only the spawner ends subspaces")
            }
            _ => None,
        }
    }

    fn charges_requester(self) -> bool {
        self == Role::Rooms
    }

    fn ends_subspaces(self) -> bool {
        self == Role::Spawner
    }

    fn offsets_on_request(self) -> bool {
        self != Role::HostSubspace
    }

    fn requester(
        self,
        spaces: Spaces,
        (uid, gid): (u32, u32),
        (parent, caller): (bool, bool),
        maps: Option<&IdMaps>,
        fds: Vec<OwnedFd>,
    ) -> Result<Requester, String> {
        if self != Role::Spawner {
            return Err("subspaces are started by the service's spawner".into());
        }
        if let Some(maps) = maps {
            if parent {
                return Err("id maps are for first-level subspaces only".into());
            }
            maps.check(uid, gid)?;
        }
        // (uid_t)-1 means "leave as it is" to setresuid.
        if uid == u32::MAX || gid == u32::MAX {
            return Err("invalid requester ids".into());
        }
        // Owned by the host's user namespace, its worker would serve as
        // host root ("Subspaces").
        if uid != 0 && !parent && !spaces.contains(Spaces::USER) {
            return Err(
                "a PID subspace without a user namespace is for root only: ask for \
                        user and pid together"
                    .into(),
            );
        }
        let mut fds = fds.into_iter();
        let parent = parent.then(|| fds.next()).flatten();
        let caller = caller.then(|| fds.next()).flatten();
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
fn send(channel: &Channel, (reply, fds): Answer) -> bool {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    channel.send_msg(&reply, &borrowed).is_ok()
}

fn readable(fd: &PollFd<'_>) -> bool {
    let ready = PollFlags::POLLIN | PollFlags::POLLHUP;
    fd.revents().is_some_and(|r| r.intersects(ready))
}

/// A pending setup's outcome, if it has one: its `Ready` (or failure), its
/// worker's end before saying anything, or its deadline passed.
fn poll_pending(s: &Starting) -> Option<Result<NsFds, Error>> {
    let mut fds = [
        PollFd::new(s.channel.as_fd(), PollFlags::POLLIN),
        PollFd::new(s.pidfd.as_fd(), PollFlags::POLLIN),
    ];
    let _ = poll(&mut fds, PollTimeout::ZERO);
    if readable(&fds[0]) {
        Some(s.ready())
    } else if readable(&fds[1]) {
        Some(Err(Error::msg(subspace::LOST)))
    } else {
        let late = "the subspace worker did not get ready in time";
        (Instant::now() >= s.deadline).then(|| Err(Error::msg(late)))
    }
}
