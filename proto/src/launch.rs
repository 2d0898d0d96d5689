//! Starting a worker process with its channel: the one place where an fd
//! crosses `exec`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

/// The fd number the worker finds its channel at.
pub const WORKER_CHANNEL_FD: i32 = 3;

/// A command that starts the worker binary at `exe` with `channel` as its
/// fd 3 (`--channel-fd 3`), stdin and stdout on `/dev/null` and stderr
/// inherited (the broker replaces it with a pipe of its own). Only that one fd is passed: every other fd of the caller is
/// close-on-exec. Keep `channel` open until the command has been spawned.
pub fn worker_command(exe: &Path, channel: &OwnedFd) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("--channel-fd")
        .arg(WORKER_CHANNEL_FD.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .env_clear();
    crate::sys::pass_fd_as(&mut cmd, channel.as_raw_fd(), WORKER_CHANNEL_FD);
    cmd
}
