//! The request loops: a serving worker (host or subspace) answers
//! [`WorkerRequest`]s in order; the supervisor starts and stops serving
//! workers for the broker.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use spacer_proto::internal::{
    self, SupervisorReply, SupervisorRequest, WorkerReply, WorkerRequest,
};
use spacer_proto::{check_spaces, fd, Channel, RecvError, Spaces};

use crate::maker::Maker;
use crate::subspace;
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

/// Serves requests on `channel` until the other end closes. Returns the
/// process's exit code.
pub fn serve(channel: Channel, role: Role) -> i32 {
    let mut maker = match Maker::new() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("spacer-worker: cannot record own namespaces: {e}");
            return 1;
        }
    };
    let mut buf = vec![0u8; internal::MAX_BYTES];
    loop {
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
                if channel.send(&internal::encode(&reply), &[]).is_err() {
                    return 0;
                }
                continue;
            }
        };
        let (reply, fds, fatal) = match internal::decode::<WorkerRequest>(&buf[..got.len]) {
            Ok(req) => handle(&mut maker, role, req),
            Err(e) => (
                WorkerReply::Invalid {
                    id: 0,
                    reason: e.to_string(),
                },
                Vec::new(),
                false,
            ),
        };
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        if channel.send(&internal::encode(&reply), &borrowed).is_err() {
            // The other end is gone: our copies close as we leave.
            return end(role, 0);
        }
        drop(fds);
        if fatal {
            eprintln!("spacer-worker: own namespaces may have changed; exiting");
            return 1;
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

/// Answers one request: the reply, its fds, and whether the worker must stop.
fn handle(maker: &mut Maker, role: Role, req: WorkerRequest) -> (WorkerReply, Vec<OwnedFd>, bool) {
    match req {
        WorkerRequest::Rooms { id, spaces } => {
            // The worker checks every request itself, whatever the broker did.
            let spaces = match check_spaces(spaces, Spaces::ROOMS) {
                Ok(s) => s,
                Err(e) => return invalid(id, e.to_string()),
            };
            match maker.rooms(spaces) {
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
            }
        }
        WorkerRequest::Subspace {
            id,
            spaces,
            uid,
            gid,
        } => {
            let spaces = match check_spaces(spaces, Spaces::SUBSPACE) {
                Ok(s) => s,
                Err(e) => return invalid(id, e.to_string()),
            };
            let ids = match role {
                Role::Host if uid == u32::MAX || gid == u32::MAX => {
                    return invalid(id, "invalid requester ids".into())
                }
                Role::Host => Some((uid, gid)),
                Role::Private | Role::Subspace => None,
            };
            match subspace::spawn(spaces, ids) {
                Ok(s) => {
                    let reply = WorkerReply::Subspace {
                        id,
                        user: s.user.is_some(),
                        pid: s.pidns.is_some(),
                        worker_pid: s.pid,
                    };
                    let mut fds = vec![s.channel, s.pidfd];
                    fds.extend(s.user);
                    fds.extend(s.pidns);
                    (reply, fds, false)
                }
                Err(e) => (
                    WorkerReply::Failed {
                        id,
                        reason: e.to_string(),
                    },
                    Vec::new(),
                    false,
                ),
            }
        }
    }
}

fn invalid(id: u64, reason: String) -> (WorkerReply, Vec<OwnedFd>, bool) {
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
            use std::os::fd::AsRawFd;
            if sys::close_fds_except(worker_end.as_raw_fd()).is_err() {
                std::process::exit(1);
            }
            std::process::exit(serve(worker_end, Role::Host))
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
