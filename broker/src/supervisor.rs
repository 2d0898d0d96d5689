//! The worker supervisor process: started as root before the privilege
//! drop, over a socketpair, with its stderr on a pipe the broker reads.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Child;

use spacer_broker::cli::SeccompArg;
use spacer_proto::{fd, launch, Channel};

/// A started supervisor.
pub struct Started {
    /// Its channel.
    pub chan: Channel,
    /// The child process (waited for when it exits).
    pub child: Child,
    /// A pidfd of it: readable once it has exited.
    pub pidfd: OwnedFd,
    /// The read end of the pipe that is the workers' stderr.
    pub stderr: OwnedFd,
}

/// Starts the worker supervisor. The workers do not share the broker's
/// stderr, which carries the audit log: what they write arrives as
/// `worker_stderr` events ([`crate::worker_stderr::relay`]).
pub fn start(exe: &Path, seccomp: SeccompArg) -> std::io::Result<Started> {
    let (mine, theirs) = Channel::pair()?;
    let theirs: OwnedFd = theirs.into();
    let (stderr_read, stderr_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut cmd = launch::worker_command(exe, theirs);
    cmd.stderr(std::process::Stdio::from(stderr_write));
    if seccomp == SeccompArg::Log {
        cmd.args(["--seccomp", "log"]);
    }
    let child = cmd.spawn()?;
    // The command (and with it our copies of the pipe's write end and of
    // the worker's end of the channel) goes here.
    drop(cmd);
    // Our own child, not yet waited for: its pid cannot have been reused.
    let pidfd = fd::pidfd_open(child.id() as i32)?;
    Ok(Started {
        chan: mine,
        child,
        pidfd,
        stderr: stderr_read,
    })
}
