//! `spacer`: the user's tool. Ask for namespaces, run a command inside new
//! ones, check and explain policy files.
//!
//! Exit status: 0 success, 1 error, 2 usage, 3 denied by policy (the
//! broker's reason on stderr as `spacer: denied: <reason>`); `spacer run`
//! exits with the command's status.

#![forbid(unsafe_code)]

/// `println!` that ends the program quietly once stdout is closed (`spacer
/// policy check FILE | head -1`) instead of panicking: the reader has taken
/// what it wanted.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod bench;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use std::time::Instant;

use clap::Parser;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, CloneFlags};
use spacer_client::cli::{Cli, Cmd, PolicyCmd, RoomOptionArgs};
use spacer_client::{
    Client, CommandExt as _, Error, MapChoice, NsType, RoomOptions, Rooms, Spaces,
};
use spacer_policy::{Decision, FileCheck, Op, Peer, Policy, RuleRef, SystemResolver, Usage};

/// Exit status for "denied by policy".
const DENIED: u8 = 3;
/// Exit status for a wrong command line.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spacer: {}", chain(&e));
            ExitCode::from(match &e {
                Failure::Service(Error::Denied(_)) => DENIED,
                Failure::Usage(_) => USAGE,
                _ => 1,
            })
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Service(#[from] Error),
    #[error("{0}")]
    Msg(String),
    #[error("{0}")]
    Usage(String),
    #[error("{what}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The error and its sources, once each, joined by ": ".
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

fn connect(socket: &Option<PathBuf>) -> Result<Client, Failure> {
    Ok(match socket {
        Some(p) => Client::connect(p)?,
        None => Client::connect_default()?,
    })
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.cmd {
        Cmd::Rooms {
            types,
            options,
            json,
        } => {
            let spaces = types.spaces();
            let options = checked_options(spaces, &options)?;
            if spaces.is_empty() {
                return Err(Failure::Usage(
                    "no namespace type given: add --net, --uts, ... or --all".into(),
                ));
            }
            let client = connect(&cli.socket)?;
            let rooms = client.rooms_with(spaces, &options)?;
            print_rooms(&rooms, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::RunInit { command } => run_init(&command),
        Cmd::Run {
            user,
            pid,
            init,
            map_auto,
            map_current_user,
            types,
            options,
            command,
        } => {
            let map = match (map_auto, map_current_user) {
                (true, _) => MapChoice::Auto,
                (_, true) => MapChoice::Current,
                _ => MapChoice::Root,
            };
            let spaces = types.spaces();
            let options = checked_options(spaces, &options)?;
            if !user && !pid && spaces.is_empty() {
                return Err(Failure::Usage(
                    "no namespace asked for: add --user, --pid, --net, ... (the command would run \
                     without any isolation)"
                        .into(),
                ));
            }
            // Rooms owned by the host's user namespace can be entered only
            // with CAP_SYS_ADMIN: say so before a grant is spent on them.
            if !user && !spaces.is_empty() && !has_sys_admin() {
                return Err(Failure::Usage(
                    "entering new namespaces of the host needs CAP_SYS_ADMIN: add --user for ones \
                     you own"
                        .into(),
                ));
            }
            let command = if command.is_empty() {
                vec![std::env::var("SHELL")
                    .ok()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "/bin/sh".into())]
            } else {
                command
            };
            let command = if init {
                // This program again, as the init of the new PID namespace.
                let me = std::env::current_exe().map_err(|source| Failure::Os {
                    what: "finding the spacer program for --init".into(),
                    source,
                })?;
                let mut c = vec![
                    me.to_string_lossy().into_owned(),
                    "run-init".into(),
                    "--".into(),
                ];
                c.extend(command);
                c
            } else {
                command
            };
            run_command(&cli.socket, (user, map), pid, spaces, &options, &command)
        }
        Cmd::Bench {
            types,
            subspace,
            requests,
            concurrency,
            warmup,
            raw,
            private,
            idle_clients,
            json,
        } => {
            if let Some(n) = idle_clients {
                bench::memory(&cli.socket, n, json)?;
                return Ok(ExitCode::SUCCESS);
            }
            let load = if subspace {
                bench::Load::Subspace
            } else {
                let s = types.spaces();
                bench::Load::Rooms(if s.is_empty() { Spaces::UTS } else { s })
            };
            // The floor first, while this process is still single-threaded.
            let floor = match (raw, load) {
                (false, _) => None,
                (true, bench::Load::Rooms(s)) => Some(bench::raw(s, requests, warmup)?),
                (true, bench::Load::Subspace) => {
                    return Err(Failure::Msg("--raw measures rooms only".into()))
                }
            };
            let report = bench::through_broker(&cli.socket, load, requests, concurrency, warmup)?;
            if private {
                let start = bench::private_startup(50)?;
                let path = bench::through_private(load, requests, concurrency, warmup)?;
                bench::print_private(&start, &path, &report, json);
            } else {
                bench::print(&report, floor.as_ref(), json);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Policy(PolicyCmd::Check { file }) => policy_check(&file),
        Cmd::Policy(PolicyCmd::Explain { file, uid, gids }) => policy_explain(&file, uid, &gids),
    }
}

/// The room options, if they go with the types asked for: an option
/// without its type is a usage error, said before anything is asked.
/// PID 1 of `spacer run --pid --init`: starts the command (PID 2), reaps
/// every process that ends up here, passes signals on, and exits with the
/// command's status once it has ended.
/// Blocks the [`FORWARDED`] signals and `SIGCHLD` and returns a signalfd
/// that reads them (non-blocking if asked). A child started afterwards
/// begins with none blocked (`die_with_parent` clears its mask).
fn watch_signals(nonblock: bool) -> Result<nix::sys::signalfd::SignalFd, Failure> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut waited = SigSet::empty();
    for s in FORWARDED.iter().chain([&Signal::SIGCHLD]) {
        waited.add(*s);
    }
    let os = |what: &str| {
        let what = what.to_owned();
        move |e: nix::errno::Errno| Failure::Os {
            what,
            source: e.into(),
        }
    };
    waited.thread_block().map_err(os("blocking signals"))?;
    let mut flags = SfdFlags::SFD_CLOEXEC;
    if nonblock {
        flags |= SfdFlags::SFD_NONBLOCK;
    }
    SignalFd::with_flags(&waited, flags).map_err(os("watching signals"))
}

fn run_init(command: &[String]) -> Result<ExitCode, Failure> {
    use nix::sys::signal::Signal;
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let signals = watch_signals(false)?;
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]);
    cmd.die_with_parent()?;
    let child = match cmd.spawn() {
        Ok(c) => nix::unistd::Pid::from_raw(c.id() as i32),
        Err(e) => return Ok(cannot_run(&command[0], &e)),
    };
    loop {
        // Reap whatever has ended; the command's end ends init.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) if p == child => {
                    return Ok(ExitCode::from(code as u8))
                }
                Ok(WaitStatus::Signaled(p, sig, _)) if p == child => {
                    return Ok(ExitCode::from(128 + sig as u8))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        if let Ok(Some(info)) = signals.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                if sig != Signal::SIGCHLD {
                    let _ = nix::sys::signal::kill(child, sig);
                }
            }
        }
    }
}

/// Whether this process holds CAP_SYS_ADMIN in its user namespace (bit 21
/// of `CapEff`).
fn has_sys_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 21) != 0)
}

fn checked_options(spaces: Spaces, args: &RoomOptionArgs) -> Result<RoomOptions, Failure> {
    let options = args.options();
    match options.check(spaces) {
        Err(spacer_client::OptionError::NeedsType(o, t)) => {
            // The flags the user typed, not the policy's name for them.
            let typed: Vec<&str> = match o {
                spacer_client::RoomOption::Loopback => vec!["--loopback"],
                spacer_client::RoomOption::Hostname => [
                    (args.hostname.is_some(), "--hostname"),
                    (args.domainname.is_some(), "--domainname"),
                ]
                .into_iter()
                .filter_map(|(on, f)| on.then_some(f))
                .collect(),
                spacer_client::RoomOption::TimeOffsets => [
                    (args.monotonic.is_some(), "--monotonic"),
                    (args.boottime.is_some(), "--boottime"),
                ]
                .into_iter()
                .filter_map(|(on, f)| on.then_some(f))
                .collect(),
            };
            Err(Failure::Usage(format!(
                "{} needs a new {t} namespace: add --{t}",
                typed.join(" and ")
            )))
        }
        // The rest (names, offsets) is checked by the service, which says
        // why in its answer.
        _ => Ok(options),
    }
}

fn print_rooms(rooms: &Rooms, json: bool) -> Result<(), Failure> {
    let mut map = serde_json::Map::new();
    for t in NsType::ALL {
        if let Some(fd) = rooms.get(t) {
            let ino =
                spacer_proto::fd::namespace_inode(fd.as_fd()).map_err(|source| Failure::Os {
                    what: format!("reading the {t} namespace"),
                    source,
                })?;
            map.insert(t.name().to_owned(), ino.into());
        }
    }
    if json {
        println!("{}", serde_json::Value::Object(map));
    } else {
        for (k, v) in map {
            println!("{k}:[{v}]");
        }
    }
    Ok(())
}

fn enter(fd: &OwnedFd, t: NsType) -> Result<(), Failure> {
    let flag = CloneFlags::from_bits_retain(t.flag().bits() as i32);
    setns(fd, flag).map_err(|e| {
        let hint = if e == nix::errno::Errno::EPERM && t != NsType::User {
            " (a namespace of the host needs CAP_SYS_ADMIN to enter; add --user for one you own)"
        } else {
            ""
        };
        Failure::Os {
            what: format!("cannot enter the new {t} namespace{hint}"),
            source: e.into(),
        }
    })
}

fn run_command(
    socket: &Option<PathBuf>,
    (user, map): (bool, MapChoice),
    pid: bool,
    rooms: Spaces,
    options: &RoomOptions,
    command: &[String],
) -> Result<ExitCode, Failure> {
    let client = connect(socket)?;
    let sub_spaces = [(user, Spaces::USER), (pid, Spaces::PID)]
        .into_iter()
        .filter(|(on, _)| *on)
        .fold(Spaces::empty(), |a, (_, f)| a | f);
    // A subspace first; the rooms are made inside it, so that it owns them.
    let (sub_client, sub) = if sub_spaces.is_empty() {
        (None, None)
    } else {
        let (c, s) = client.subspace_mapped(sub_spaces, map)?;
        (Some(c), Some(s))
    };
    let made = if rooms.is_empty() {
        Rooms::default()
    } else {
        sub_client
            .as_ref()
            .unwrap_or(&client)
            .rooms_with(rooms, options)?
    };
    let cwd = std::env::current_dir().ok();
    // The user namespace first: it grants the capabilities for the rest.
    if let Some(u) = sub.as_ref().and_then(|s| s.user.as_ref()) {
        enter(u, NsType::User)?;
    }
    for t in Spaces::ROOMS.types() {
        if let Some(fd) = made.get(t) {
            enter(fd, t)?;
        }
    }
    if made.mnt.is_some() {
        // setns into a mount namespace moves to its root; go back where we
        // were (the room is a copy of this process's view), or say why not.
        if let Some(dir) = &cwd {
            std::env::set_current_dir(dir).map_err(|source| Failure::Os {
                what: format!(
                    "cannot keep the working directory {} in the new mount namespace",
                    dir.display()
                ),
                source,
            })?;
        }
    }
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]);
    // The subspace's connection goes to the command (`SPACER_FD`): a
    // `spacer` inside asks this subspace, whose namespaces it can enter,
    // and the policy's max_depth counts the nesting.
    let _inherited = match &sub_client {
        Some(c) => {
            let fd = nix::unistd::dup(c).map_err(|e| Failure::Os {
                what: "passing the subspace connection on".into(),
                source: e.into(),
            })?;
            cmd.env(spacer_client::FD_ENV, fd.as_raw_fd().to_string());
            Some(fd)
        }
        None => None,
    };
    match sub.as_ref().and_then(|s| s.pid.as_ref()) {
        None => {
            // Replace this process; the fds we hold are close-on-exec.
            let e = cmd.exec();
            Ok(cannot_run(&command[0], &e))
        }
        Some(pidns) => {
            // A PID namespace applies to children: the command, started now,
            // is the new namespace's PID 1.
            enter(pidns, NsType::Pid)?;
            if made.mnt.is_some() {
                // Its own mount namespace: /proc shows its PID namespace.
                cmd.mount_proc();
            }
            supervise(cmd, &command[0])
        }
    }
}

/// A command that could not be started, in the shell's habit: 127 when it
/// is not there, 126 when it cannot be executed.
fn cannot_run(name: &str, e: &std::io::Error) -> ExitCode {
    eprintln!("spacer: cannot run {name}: {e}");
    ExitCode::from(match e.raw_os_error() {
        Some(libc::ENOENT) => 127,
        _ => 126,
    })
}

/// Signals `spacer run` passes on to its command.
const FORWARDED: [nix::sys::signal::Signal; 7] = {
    use nix::sys::signal::Signal::*;
    [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH]
};

/// How long a command has to end after a forwarded TERM, INT, HUP or QUIT
/// before it is killed (as PID 1 of its namespace it ignores a signal it
/// has no handler for).
const GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Starts the command as this process's child and stays with it, as
/// `unshare --fork --kill-child` does: signals sent to `spacer` are passed
/// on, the command dies with `spacer` (SIGKILL, even if `spacer` is killed
/// outright), and `spacer` exits with its status (128+n for a signal).
fn supervise(mut cmd: Command, name: &str) -> Result<ExitCode, Failure> {
    use nix::sys::signal::Signal;
    let signals = watch_signals(true)?;
    cmd.die_with_parent()?;
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ok(cannot_run(name, &e)),
    };
    // Not waited for yet, so the pid is still the child's. (No helper
    // thread: this process has joined a PID namespace for its children,
    // and the kernel refuses new threads then.)
    let pidfd = spacer_proto::fd::pidfd_open(child.id() as i32).ok();
    let mut ending: Option<(Signal, Instant)> = None;
    loop {
        if let Some(status) = child.try_wait().map_err(|source| Failure::Os {
            what: format!("waiting for {name}"),
            source,
        })? {
            let code = match (status.code(), status.signal(), ending) {
                (Some(c), _, _) => c,
                // Killed after the grace: as if by the signal it was sent.
                (None, Some(9), Some((sig, _))) => 128 + sig as i32,
                (None, s, _) => 128 + s.unwrap_or(0),
            };
            return Ok(ExitCode::from(code as u8));
        }
        // Past the grace after a forwarded TERM, INT, HUP or QUIT: ended.
        let timeout = match ending {
            Some((_, at)) => {
                let left = (at + GRACE).saturating_duration_since(Instant::now());
                if left.is_zero() {
                    if let Some(p) = &pidfd {
                        // ESRCH: it ended meanwhile.
                        let _ = spacer_proto::fd::pidfd_send_signal(p.as_fd(), libc::SIGKILL);
                    }
                    PollTimeout::from(100u16)
                } else {
                    PollTimeout::try_from(left.as_millis().max(1) as i32)
                        .unwrap_or(PollTimeout::MAX)
                }
            }
            None => PollTimeout::NONE,
        };
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut fds, timeout);
        while let Ok(Some(info)) = signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            if sig == Signal::SIGCHLD {
                continue;
            }
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
            if matches!(
                sig,
                Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP | Signal::SIGQUIT
            ) && ending.is_none()
            {
                ending = Some((sig, Instant::now()));
            }
        }
    }
}

/// A policy file as written, checked as `check` says (the broker checks
/// with [`FileCheck::Strict`]).
fn load(file: &Path, check: FileCheck) -> Result<Policy, Failure> {
    spacer_policy::load_file(file, check, &SystemResolver).map_err(|e| match e {
        spacer_policy::LoadError::Unsafe { .. } => {
            Failure::Msg(format!("{}; spacer-broker refuses it", chain(&e)))
        }
        e => Failure::Msg(chain(&e)),
    })
}

/// The policy as the broker applies it by default: its per-uid caps (64
/// connections, subspaces and live rooms of each type) where the file sets
/// none (`spacer-broker --max-*-per-uid` changes them).
fn with_broker_caps(pol: Policy) -> Policy {
    pol.with_default_limits(&spacer_policy::Limits::broker_defaults())
}

fn describe(spaces: Spaces) -> String {
    if spaces.is_empty() {
        "nothing".into()
    } else {
        spaces.names().join(", ")
    }
}

/// `; options loopback, hostname` (and `; subordinate ids`) or nothing.
fn options_text(grant: &spacer_policy::Grant) -> String {
    let mut text = String::new();
    if !grant.options.is_empty() {
        let names: Vec<&str> = grant.options.iter().map(|o| o.name()).collect();
        text = format!("; options {}", names.join(", "));
    }
    if grant.subids {
        text.push_str("; subordinate ids (/etc/subuid, /etc/subgid)");
    }
    text
}

/// `; max_depth 2, max_rooms 64 (broker default)`: the limits that apply
/// ([`limit_texts`]); or nothing.
fn limits_text(written: &spacer_policy::Limits, applied: &spacer_policy::Limits) -> String {
    let text = limit_texts(written, applied, false);
    if text.is_empty() {
        String::new()
    } else {
        format!("; {}", text.join(", "))
    }
}

/// Validates the file as the broker would load it: its owner and mode too.
fn policy_check(file: &Path) -> Result<ExitCode, Failure> {
    let written = load(file, FileCheck::Strict)?;
    let pol = with_broker_caps(written.clone());
    println!("{}: valid, {} rule(s)", file.display(), pol.rules().len());
    for (w, r) in written.rules().iter().zip(pol.rules()) {
        println!(
            "  {} (line {}): {} may create {}{}{}",
            RuleRef::Rule(r),
            r.line,
            r.matcher,
            describe(r.grant.allow),
            options_text(&r.grant),
            limits_text(&w.grant.limits, &r.grant.limits)
        );
    }
    println!(
        "  defaults: everyone else may create {}{}{}",
        describe(pol.defaults().allow),
        options_text(pol.defaults()),
        limits_text(&written.defaults().limits, &pol.defaults().limits)
    );
    for w in pol.warnings() {
        println!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The limits under a grant, each with where it comes from: the policy
/// (`max_depth 2`), the broker's default cap (`max_rooms 64 (broker
/// default)`) or, if `unlimited`, none (`requests_per_minute unlimited`).
fn limit_texts(
    written: &spacer_policy::Limits,
    applied: &spacer_policy::Limits,
    unlimited: bool,
) -> Vec<String> {
    let set = written.set();
    let text = |(key, value): (&str, Option<u32>)| match value {
        None => unlimited.then(|| format!("{key} unlimited")),
        Some(v) if set.iter().any(|&(k, _)| k == key) => Some(format!("{key} {v}")),
        Some(v) => Some(format!("{key} {v} (broker default)")),
    };
    applied.each().into_iter().filter_map(text).collect()
}

/// The primary and supplementary groups of a login of `uid`, as the broker
/// would see them (`SO_PEERGROUPS` of a process started by `login`, `su -`
/// or `sshd`, which set what `initgroups(3)` finds): `None` for a uid with
/// no user entry.
fn login_groups(uid: u32) -> Result<Option<(String, u32, Vec<u32>)>, Failure> {
    let os = |what: &str| {
        let what = what.to_owned();
        move |e: nix::errno::Errno| Failure::Os {
            what,
            source: std::io::Error::from(e),
        }
    };
    let Some(user) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .map_err(os(&format!("cannot look up uid {uid}")))?
    else {
        return Ok(None);
    };
    let name = std::ffi::CString::new(user.name.clone())
        .map_err(|_| Failure::Msg(format!("user name of uid {uid} holds a NUL byte")))?;
    let groups = nix::unistd::getgrouplist(&name, user.gid).map_err(os(&format!(
        "cannot look up the groups of user {}",
        user.name
    )))?;
    Ok(Some((
        user.name,
        user.gid.as_raw(),
        groups.into_iter().map(|g| g.as_raw()).collect(),
    )))
}

fn policy_explain(file: &Path, uid: u32, gids: &[u32]) -> Result<ExitCode, Failure> {
    let written = load(file, FileCheck::ContentOnly)?;
    if let Some(problem) = std::fs::metadata(file)
        .ok()
        .and_then(|m| spacer_policy::ownership_problem(&m))
    {
        eprintln!(
            "spacer: warning: policy file {} {problem}; spacer-broker refuses it",
            file.display()
        );
    }
    let pol = with_broker_caps(written.clone());
    let looked_up;
    let gids = if gids.is_empty() {
        looked_up = match login_groups(uid)? {
            Some((name, gid, groups)) => {
                let others: Vec<u32> = groups.into_iter().filter(|&g| g != gid).collect();
                let listed = if others.is_empty() {
                    "none".to_owned()
                } else {
                    others
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!(
                    "uid {uid} is user {name:?}: groups looked up as a login of that user has \
                     them (primary {gid}, supplementary {listed}); --gid gives others"
                );
                [vec![gid], others].concat()
            }
            None => {
                println!("uid {uid} has no user entry: no groups (--gid gives some)");
                Vec::new()
            }
        };
        &looked_up[..]
    } else {
        gids
    };
    // Matching looks at the primary group and the supplementary ones alike
    // (and a login's supplementary groups hold its primary group anyway).
    let peer = Peer {
        uid,
        gid: gids.first().copied().unwrap_or(u32::MAX),
        groups: gids,
    };
    let (rule, grant) = pol.matching(&peer);
    let written_limits = written.matching(&peer).1.limits;
    let who = match rule {
        RuleRef::Rule(r) => format!("{rule} ({}, line {})", r.matcher, r.line),
        RuleRef::Defaults => "defaults (no rule matches)".into(),
    };
    println!("uid {uid} gids {gids:?}: decided by {who}");
    if grant.allow.is_empty() {
        println!("  may create nothing: every request is denied");
        return Ok(ExitCode::SUCCESS);
    }
    println!("  may create: {}", describe(grant.allow));
    let names: Vec<&str> = grant.options.iter().map(|o| o.name()).collect();
    println!(
        "  room options: {}",
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    );
    if grant.subids {
        println!(
            "  subordinate ids: a user subspace may map the ranges /etc/subuid and /etc/subgid \
             give this uid (spacer run --map-auto)"
        );
    }
    println!(
        "  limits: {}",
        limit_texts(&written_limits, &grant.limits, true).join(", ")
    );
    if grant.allow.contains(Spaces::USER) {
        println!(
            "  note: with user it can create every other namespace type inside its own user \
             namespaces, with its own powers"
        );
    }
    // A worked example the administrator can check against the audit log.
    if let Decision::Deny { reason, .. } =
        pol.decide(&peer, Op::Rooms, Spaces::ROOMS, &[], &Usage::default())
    {
        println!("  e.g. rooms --all: denied ({reason})");
    }
    Ok(ExitCode::SUCCESS)
}
