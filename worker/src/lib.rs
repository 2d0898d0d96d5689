//! # spacer-worker
//!
//! The privileged half of spacer. Trust level: **privileged** (it holds
//! `CAP_SYS_ADMIN`; every line is attack surface). It talks only over the
//! socket its parent handed it, confines itself before reading a request,
//! re-checks every request, and leaves its own namespaces as they were.
//! Processes, modules and trust: docs/ARCHITECTURE.md. The library exists
//! for the binary, for the tests of its seccomp filters, and for
//! `spacer-private-worker` (private mode), which shares the making of
//! rooms and subspaces through [`Part`]: the binary the broker starts has
//! no private role, argument or list.

#![deny(unsafe_code)]

mod maker;
mod privilege;
pub mod seccomp;
pub mod serve;
mod subspace;
mod supervise;
#[allow(unsafe_code)]
mod sys;

use std::os::fd::OwnedFd;
use std::process::ExitCode;

use spacer_core::internal::WorkerRequest;
use spacer_core::{launch::WorkerArgs, Channel, IdMaps, Spaces};

pub use subspace::Requester;
pub use sys::Error;

/// What a process of the daemon's worker does; each has its own seccomp
/// filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Started by the broker: forks room workers and the spawner, kills hung ones.
    Supervisor,
    /// Makes rooms in the host's namespaces.
    Rooms,
    /// Starts (and ends) every subspace worker of the broker's, at any depth.
    Spawner,
    /// Serves inside a subspace the spawner started.
    HostSubspace,
}

/// What the shared serving loop ([`serve::serve`]), the subspace start
/// (subspace start) and the filters ([`seccomp::install`]) ask of a
/// serving process's part: the daemon's parts are [`Role`]s; private
/// mode's are `spacer-private-worker`'s own.
pub trait Part: Copy + Eq + std::fmt::Debug + 'static {
    /// Started by the broker as root: dies with its parent, keeps its
    /// capabilities across uid changes, takes a network namespace of its own.
    const DAEMON: bool;
    /// The syscalls this part calls itself.
    fn calls(self) -> Vec<seccomp::Entry>;
    /// This part and every part it may fork (filters stack).
    fn tree(self) -> &'static [Self];
    /// The part of a subspace worker it starts.
    fn subspace(self) -> Self;
    /// Fds a request may bring.
    fn max_fds(self) -> usize;
    /// Why this part refuses a request of this kind, if it does.
    fn refuses(self, req: &WorkerRequest) -> Option<&'static str>;
    /// Whether rooms are made as the requester's effective uid.
    fn charges_requester(self) -> bool;
    /// Whether it keeps the subspace workers it starts, to end them on
    /// request and when it leaves.
    fn ends_subspaces(self) -> bool;
    /// Whether a subspace worker without an offsets file opens it for
    /// each request (else offsets are refused).
    fn offsets_on_request(self) -> bool;
    /// What a failed room request says.
    fn room_error(self, e: Error) -> String {
        e.to_string()
    }
    /// Who a subspace (`spaces` checked, id maps only with a user
    /// namespace) is for, as this part allows; `fds`: the parent user
    /// namespace and the requester's pidfd, as announced.
    fn requester(
        self,
        spaces: Spaces,
        ids: (u32, u32),
        announced: (bool, bool),
        maps: Option<&IdMaps>,
        fds: Vec<OwnedFd>,
    ) -> Result<Requester, String>;
    /// Leaving, after the serving loop.
    fn leave(self) {}
}

/// Start-up shared by both worker binaries: reads the command line,
/// adopts the channel and checks that our parent made it. `who`: what
/// starts the binary, for the refusal.
pub fn start(name: &str, who: &str) -> Result<(Channel, WorkerArgs), ExitCode> {
    let refuse = |e: &dyn std::fmt::Display| {
        eprintln!("{name}: refusing to run: {e}\n{name} is started by {who}, never by hand");
        ExitCode::from(2)
    };
    let args = WorkerArgs::parse(std::env::args().skip(1)).map_err(|e| refuse(&e))?;
    // SAFETY: the number is the one fd our parent left for us, and nothing
    // in this fresh process owns it yet.
    #[allow(unsafe_code)]
    let inherited = unsafe { sys::adopt_inherited_fd(args.channel_fd) };
    let channel = match inherited.map(Channel::from_fd) {
        Some(Ok(c)) => c,
        Some(Err(e)) => return Err(refuse(&format!("channel: {e}"))),
        None => return Err(refuse(&"channel: no such fd")),
    };
    privilege::check_channel(&channel).map_err(|e| refuse(&e))?;
    Ok((channel, args))
}

/// Confines the process as `first` (each step: `privilege::confine`),
/// then serves with `run`.
pub fn confine_and_run<P: Part>(
    channel: Channel,
    args: WorkerArgs,
    first: P,
    run: impl FnOnce(Channel) -> i32,
) -> ExitCode {
    let mode = seccomp::Mode::logging(args.log_seccomp);
    if let Err(e) = privilege::confine(&channel, mode, first) {
        eprintln!("spacer-worker: cannot confine itself: {e}");
        return ExitCode::from(1);
    }
    ExitCode::from(run(channel) as u8)
}

/// The daemon's worker process: the supervisor, and nothing else, whatever
/// its arguments.
pub fn main() -> ExitCode {
    let who = "spacer-broker; run spacer-broker instead (private mode starts \
               spacer-private-worker)";
    match start("spacer-worker", who) {
        Ok((channel, args)) => {
            confine_and_run(channel, args, Role::Supervisor, supervise::supervise)
        }
        Err(code) => code,
    }
}
