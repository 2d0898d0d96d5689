//! # spacer-worker
//!
//! The privileged half of spacer. Trust level: **privileged** — it holds
//! `CAP_SYS_ADMIN` (and the three capabilities listed in
//! [`confine::WORKER_CAPS`]), so every line is attack surface. It:
//!
//! * talks only over the socket its parent handed it (no path a client could
//!   connect to) and refuses to run when that is not a socket to its parent;
//! * drops to its few capabilities, sets no_new_privs, becomes non-dumpable,
//!   and installs a seccomp allow-list before reading a request;
//! * re-checks every request against its own fixed vocabulary;
//! * leaves its own namespaces as they were after every request.
//!
//! Started by `spacer-broker` it is the *supervisor*, which forks serving
//! workers on the broker's request (and kills hung ones). Started by the
//! client library's private mode (`--private`) it serves directly, with the
//! caller's own privileges. It never links `policy`, `toml` or `clap`.

#![deny(unsafe_code)]
#![forbid(unsafe_op_in_unsafe_fn)]

mod confine;
mod maker;
mod prepare;
mod seccomp;
mod serve;
mod subspace;
#[allow(unsafe_code)]
mod sys;

use std::process::ExitCode;

use spacer_proto::Channel;

use crate::seccomp::SeccompMode;

const USAGE: &str = "spacer-worker is started by spacer-broker (or by the spacer client \
library's private mode), never by hand; run spacer-broker instead";

struct Args {
    channel_fd: i32,
    seccomp: SeccompMode,
    private: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut channel_fd = None;
    let mut seccomp = SeccompMode::Kill;
    let mut private = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--channel-fd" => {
                let v = args.next().ok_or("--channel-fd needs a value")?;
                channel_fd = Some(v.parse::<i32>().map_err(|_| "bad --channel-fd")?);
            }
            "--seccomp" => match args.next().as_deref() {
                Some("kill") => seccomp = SeccompMode::Kill,
                Some("log") => seccomp = SeccompMode::Log,
                _ => return Err("--seccomp takes kill or log".into()),
            },
            "--private" => private = true,
            "--allow-list-len" => {
                println!("{}", seccomp::allow_list_len());
                std::process::exit(0);
            }
            "--seccomp-selftest" => {
                // Installs the production filter, then makes one forbidden
                // call: the process must die of SIGSYS (needs no privilege).
                let name = args.next().ok_or("--seccomp-selftest needs a call name")?;
                std::process::exit(seccomp::selftest(&name, seccomp));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let channel_fd = channel_fd.ok_or("no --channel-fd")?;
    if channel_fd < 3 {
        return Err("bad --channel-fd".into());
    }
    Ok(Args {
        channel_fd,
        seccomp,
        private,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("spacer-worker: refusing to run: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let inherited = sys::adopt_inherited_fd(args.channel_fd)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EBADF));
    let channel = match inherited.and_then(Channel::from_fd) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spacer-worker: refusing to run: channel: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = confine::check_channel(&channel) {
        eprintln!("spacer-worker: refusing to run: {e}\n{USAGE}");
        return ExitCode::from(2);
    }
    let role = if args.private {
        serve::Role::Private
    } else {
        serve::Role::Host
    };
    if let Err(e) = confine::confine(&channel, args.seccomp, role) {
        eprintln!("spacer-worker: cannot confine itself: {e}");
        return ExitCode::from(1);
    }
    let code = match role {
        serve::Role::Private => serve::serve(channel, role, None),
        _ => serve::supervise(channel),
    };
    ExitCode::from(code as u8)
}
