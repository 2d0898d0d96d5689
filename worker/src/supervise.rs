//! The supervisor: forks serving workers on the broker's request (already
//! confined) and kills hung ones; the kernel reaps them.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use spacer_core::internal::{SupervisorReply, SupervisorRequest, Trust, WorkerKind};
use spacer_core::{fd, Channel, MessageError, RecvError};

use crate::sys::{self, Ctx, Error};
use crate::Role;

/// Serves the broker until it closes the channel. Returns the exit code.
pub fn supervise(channel: Channel) -> i32 {
    let mut workers: Vec<(i32, OwnedFd)> = Vec::new();
    let mut buf = vec![0u8; spacer_core::internal::MAX_BYTES];
    loop {
        let req = match channel.recv_msg::<SupervisorRequest>(&mut buf, Trust::Counts) {
            Ok(Some((req, _))) => req,
            Ok(None) => return 0,
            Err(MessageError::Recv(RecvError::Io(e))) => {
                eprintln!("spacer-worker: supervisor receiving: {e}");
                return 1;
            }
            Err(_) => continue,
        };
        match req {
            SupervisorRequest::Spawn { kind } => {
                let (msg, fds) = match spawn_serving(&mut workers, kind) {
                    Ok((pid, chan, pidfd)) => (SupervisorReply::Spawned { pid }, vec![chan, pidfd]),
                    Err(e) => {
                        let reason = e.to_string();
                        (SupervisorReply::Failed { reason }, Vec::new())
                    }
                };
                let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
                if channel.send_msg(&msg, &borrowed).is_err() {
                    return 0;
                }
            }
            SupervisorRequest::Kill { pid } => {
                if let Some(i) = workers.iter().position(|(p, _)| *p == pid) {
                    // ESRCH: it had already exited. Nothing else can fail here.
                    let _ = fd::pidfd_send_signal(workers.swap_remove(i).1.as_fd(), libc::SIGKILL);
                }
            }
        }
    }
}

/// Forks a serving worker; returns its pid, the broker's end of its
/// channel and a pidfd (a duplicate stays here for `Kill`).
fn spawn_serving(
    workers: &mut Vec<(i32, OwnedFd)>,
    kind: WorkerKind,
) -> Result<(i32, OwnedFd, OwnedFd), Error> {
    let ctx = ("creating a worker channel", "starting a worker");
    let (broker_end, pid, pidfd) = sys::fork_with_channel(ctx, |worker_end| {
        // SAFETY: a fresh child that never returns to the frames owning the
        // other fds (`workers`, the supervisor's channel).
        #[allow(unsafe_code)]
        let closed = unsafe { sys::close_fds_except(&[worker_end.as_raw_fd()]) };
        if closed.is_err() {
            return 1;
        }
        let role = match kind {
            WorkerKind::Rooms => Role::Rooms,
            WorkerKind::Subspaces => {
                let _ = nix::sys::prctl::set_name(c"spacer-spawner");
                Role::Spawner
            }
        };
        crate::serve::narrow_and_serve(worker_end, role, None)
    })?;
    let for_broker = pidfd.try_clone().ctx("duplicating a pidfd")?;
    workers.push((pid, pidfd));
    Ok((pid, broker_end.into_fd(), for_broker))
}
