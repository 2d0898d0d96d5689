//! Starting a worker process with its channel: the one place where an fd
//! crosses `exec`, and the worker's command line, written
//! ([`worker_command`]) and read ([`WorkerArgs::parse`]) here.

use std::os::fd::{OwnedFd, RawFd};
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
/// of the channel is open only in the worker. Add `--seccomp log` as
/// [`WorkerArgs`] reads it. The same command line starts `spacer-worker`
/// (the broker) and `spacer-private-worker` (private mode): which role a
/// worker takes is which binary it is, never an argument.
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

/// A worker's command line, as [`worker_command`] (and `--seccomp
/// kill|log`) wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerArgs {
    /// The channel's fd number (not yet checked to be open).
    pub channel_fd: RawFd,
    /// Log syscalls outside the allow-list instead of dying of them.
    pub log_seccomp: bool,
}

impl WorkerArgs {
    /// Reads the arguments after the program name. The error says what is
    /// wrong; a caller from another build is told so first (it writes the
    /// version before any argument this build may not know).
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<WorkerArgs, String> {
        let ours = crate::internal::VERSION;
        let (mut fd, mut version) = (None, false);
        let mut log_seccomp = false;
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "--channel-fd" => fd = Some(value()?.parse().map_err(|_| "bad --channel-fd")?),
                "--internal-version" => match value()? {
                    v if v == ours.to_string() => version = true,
                    v => {
                        return Err(format!(
                            "its caller speaks internal protocol {v}, this worker {ours}: install \
                             spacer-worker from the same build as spacer-broker and the spacer \
                             client library"
                        ))
                    }
                },
                "--seccomp" => match value()?.as_str() {
                    "kill" => log_seccomp = false,
                    "log" => log_seccomp = true,
                    _ => return Err("--seccomp takes kill or log".into()),
                },
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if !version {
            return Err(format!(
                "no --internal-version: its caller comes from another build (this worker \
                 speaks internal protocol {ours})"
            ));
        }
        match fd {
            Some(channel_fd) if channel_fd >= 3 => Ok(WorkerArgs {
                channel_fd,
                log_seccomp,
            }),
            Some(_) => Err("bad --channel-fd".into()),
            None => Err("no --channel-fd".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<WorkerArgs, String> {
        WorkerArgs::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn what_worker_command_writes_parses_back() {
        let (_a, b) = crate::Channel::pair().unwrap();
        let mut cmd = worker_command(Path::new("/x"), b.into());
        cmd.args(["--seccomp", "log"]);
        let args = cmd.get_args().map(|a| a.to_str().unwrap().to_owned());
        let want = WorkerArgs {
            channel_fd: WORKER_CHANNEL_FD,
            log_seccomp: true,
        };
        assert_eq!(WorkerArgs::parse(args), Ok(want));
    }

    #[test]
    fn a_caller_of_another_build_or_a_bad_fd_is_refused() {
        let v = crate::internal::VERSION.to_string();
        let other = (crate::internal::VERSION + 1).to_string();
        for (args, why) in [
            (vec!["--channel-fd", "3"], "no --internal-version"),
            (
                vec!["--channel-fd", "3", "--internal-version", &other],
                "speaks internal protocol",
            ),
            // A newer caller's arguments come after its version.
            (
                vec![
                    "--channel-fd",
                    "3",
                    "--internal-version",
                    &other,
                    "--frobnicate",
                ],
                "speaks internal protocol",
            ),
            (vec!["--internal-version", &v], "no --channel-fd"),
            (
                vec!["--channel-fd", "2", "--internal-version", &v],
                "bad --channel-fd",
            ),
            (vec!["--channel-fd"], "needs a value"),
            (vec!["--seccomp", "allow"], "kill or log"),
            (vec!["--frobnicate"], "unknown argument"),
            // No argument makes a worker private: that is another binary.
            (
                vec!["--channel-fd", "3", "--internal-version", &v, "--private"],
                "unknown argument",
            ),
        ] {
            let e = parse(&args).unwrap_err();
            assert!(e.contains(why), "{args:?}: {e}");
        }
    }
}
