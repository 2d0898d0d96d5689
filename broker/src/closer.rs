//! Closing fds whose last `close(2)` can block, away from the event loop.
//!
//! A client can hand the broker an fd whose close waits: a TCP socket with
//! `SO_LINGER` and unsent data waits for the linger time, a file of a
//! stopped FUSE server waits for its `FLUSH`, a mount namespace with many
//! mounts is torn down in the last close. Closed on the event loop, each
//! stalls every other client. So:
//!
//! * client sockets refuse fds outright where the kernel can
//!   (`SO_PASSRIGHTS` off, Linux 6.16): nothing reaches the broker;
//! * elsewhere, and for every fd the broker drops that a tenant may hold
//!   the other copies of (a subspace worker's reply, rooms a client did not
//!   take), the fd goes to [`discard`]: sockets get `SO_LINGER` off-with-0
//!   (a close that aborts at once), then one thread of their own closes
//!   them.
//!
//! The queue is bounded. While it is full (the closer stuck in a close
//! that no linger setting shortens), fds are closed where they are: the
//! stall is then back, but the broker's fd table stays bounded.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;

use nix::sys::socket::{setsockopt, sockopt};
use spacer_proto::Channel;

/// Makes a client-facing channel (an accepted connection, the broker's
/// end of a subspace's `conn`) refuse attached fds: by the kernel where it
/// can, else by taking them in and handing them to [`discard`]. The
/// fallback can be forced for tests (`SPACER_TEST_FD_FALLBACK=1` in the
/// broker's environment at start).
pub fn refuse_fds(chan: &mut Channel) -> std::io::Result<()> {
    if forced_fallback() || !chan.refuse_fds()? {
        chan.discard_fds(discard);
    }
    Ok(())
}

/// Whether the kernel refuses fds sent to this broker's clients' sockets
/// (for the start event).
pub fn kernel_refuses() -> bool {
    !forced_fallback() && Channel::pair().is_ok_and(|(a, _b)| a.refuse_fds().unwrap_or(false))
}

/// Whether the fallback is forced (`SPACER_TEST_FD_FALLBACK`, read once).
fn forced_fallback() -> bool {
    *FORCE_FALLBACK.get_or_init(|| std::env::var_os("SPACER_TEST_FD_FALLBACK").is_some())
}

static FORCE_FALLBACK: OnceLock<bool> = OnceLock::new();

/// Batches of fds waiting for the closer thread.
const QUEUE: usize = 1024;

static CLOSER: OnceLock<SyncSender<Vec<OwnedFd>>> = OnceLock::new();

/// Starts the closer thread (once; later calls do nothing).
pub fn start() -> std::io::Result<()> {
    if CLOSER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = sync_channel::<Vec<OwnedFd>>(QUEUE);
    std::thread::Builder::new()
        .name("spacer-closer".into())
        .spawn(move || {
            for batch in rx {
                drop(batch);
            }
        })?;
    let _ = CLOSER.set(tx);
    Ok(())
}

/// Closes fds the broker does not want, off the event loop (a
/// [`spacer_proto::channel::Discard`]).
pub fn discard(fds: Vec<OwnedFd>) {
    if fds.is_empty() {
        return;
    }
    for fd in &fds {
        // Not a socket: ENOTSOCK, nothing to do.
        let _ = setsockopt(
            &fd.as_fd(),
            sockopt::Linger,
            &libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        );
    }
    match CLOSER.get() {
        Some(tx) => match tx.try_send(fds) {
            Ok(()) => {}
            Err(TrySendError::Full(fds) | TrySendError::Disconnected(fds)) => drop(fds),
        },
        None => drop(fds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Duration;

    #[test]
    fn discarded_fds_are_closed_soon_by_the_closer() {
        start().unwrap();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        discard(vec![OwnedFd::from(a)]);
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // End of stream once the closer closed the only copy of `a`.
        assert_eq!(b.read(&mut [0u8; 1]).unwrap(), 0);
    }
}
