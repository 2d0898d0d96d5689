//! Starting a worker process with its channel: the one place where an fd
//! crosses `exec`.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};

/// The fd number the worker finds its channel at.
pub const WORKER_CHANNEL_FD: i32 = 3;

/// A command that starts the worker binary at `exe` with `channel` as its
/// fd 3 (`--channel-fd 3`), the internal protocol's
/// [`VERSION`](crate::internal::VERSION) (`--internal-version`), stdin and
/// stdout on `/dev/null` and stderr inherited (the broker replaces it with
/// a pipe of its own). Only that one fd is passed: every other fd of the
/// caller is close-on-exec. The command owns `channel` from here and
/// closes it when dropped: drop it once spawned, so that the worker's end
/// of the channel is open only in the worker.
pub fn worker_command(exe: &Path, channel: OwnedFd) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("--channel-fd")
        .arg(WORKER_CHANNEL_FD.to_string())
        .arg("--internal-version")
        .arg(crate::internal::VERSION.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .env_clear();
    crate::sys::pass_fd_as(&mut cmd, channel, WORKER_CHANNEL_FD);
    cmd
}
