//! The command line of `spacer` (also used to generate its manual page
//! and shell completions). Doc comments here are the command's help text;
//! flattened groups and the subcommand field are documented by their types.
#![allow(missing_docs)]

use std::path::PathBuf;

use crate::{Offset, RoomOptions, Spaces};

/// The `spacer` command.
#[derive(Debug, clap::Parser)]
#[command(
    name = "spacer",
    version,
    about = "New Linux namespaces from the spacer service"
)]
pub struct Cli {
    /// The broker's socket [env: SPACER_SOCKET; default: /run/spacer/spacer.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Create new namespaces and print them (type and inode).
    Rooms {
        #[command(flatten)]
        types: RoomTypes,
        #[command(flatten)]
        options: RoomOptionArgs,
        /// Print one JSON object: {"net": 4026532301, ...}.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside freshly granted namespaces.
    ///
    /// Without --pid, spacer becomes the command. With --pid, the command
    /// is PID 1 of the new namespace and spacer stays its parent, as
    /// `unshare --fork --kill-child` does: TERM, INT, HUP, QUIT, USR1, USR2
    /// and WINCH sent to spacer are passed on (after TERM, INT, HUP or QUIT
    /// the command has 2 seconds, then it is killed), the command is killed
    /// if spacer dies, and spacer exits with the command's status (128+n if
    /// a signal ended it). A command that is not there exits 127, one that
    /// cannot be executed 126. With --pid and --mnt, /proc is mounted anew
    /// for the new PID namespace. Mount and UTS rooms are copies of the
    /// caller's own; the working directory is kept (or spacer says why
    /// not). With --user or --pid the subspace's connection is passed to
    /// the command as an inherited fd named by $SPACER_FD: a spacer inside
    /// asks that subspace (and the policy's max_depth counts).
    Run {
        /// A new user namespace owned by you, where you are uid 0 (works
        /// without privileges).
        #[arg(long, short = 'U')]
        user: bool,
        /// A new PID namespace; the command is its PID 1.
        #[arg(long, short = 'p')]
        pid: bool,
        /// With --pid: a minimal init is PID 1 instead, which starts the
        /// command, reaps every orphan, passes signals on and exits with
        /// the command's status (the `docker run --init` habit).
        #[arg(long, requires = "pid")]
        init: bool,
        /// With --user: you are uid 0 inside, and from uid and gid 1 on the
        /// ranges /etc/subuid and /etc/subgid give you are mapped (if the
        /// policy grants subids), so that chown, tar and container
        /// runtimes work inside.
        #[arg(long, requires = "user", conflicts_with = "map_current_user")]
        map_auto: bool,
        /// With --user: you keep your own uid and gid inside, not 0.
        #[arg(long, requires = "user")]
        map_current_user: bool,
        #[command(flatten)]
        types: RoomTypes,
        #[command(flatten)]
        options: RoomOptionArgs,
        /// The command and its arguments (`--` before it is optional);
        /// without one, $SHELL (else /bin/sh).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<String>,
    },
    /// Policy files: check and explain.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// The init of `spacer run --pid --init` (not for direct use).
    #[command(name = "run-init", hide = true)]
    RunInit {
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Measure a running broker: requests/s and latency.
    Bench {
        #[command(flatten)]
        types: RoomTypes,
        /// Subspace(user+pid) requests instead of rooms.
        #[arg(long, conflicts_with_all = ["cgroup", "ipc", "mnt", "net", "time", "uts", "all"])]
        subspace: bool,
        /// Requests to measure (after warm-up).
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Concurrent connections (one thread each).
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Unmeasured requests per connection first.
        #[arg(long, default_value_t = 50)]
        warmup: usize,
        /// Also measure the same namespace work done in this process, with
        /// no broker and no worker (needs root; rooms only), in the same run.
        #[arg(long)]
        raw: bool,
        /// Also measure private mode (a worker of this process's own, no
        /// broker): its start-up time and the same load through it.
        #[arg(long)]
        private: bool,
        /// Instead of a load: memory of the broker and its workers, idle and
        /// with this many connected idle clients.
        #[arg(long, value_name = "N")]
        idle_clients: Option<usize>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct RoomTypes {
    /// cgroup namespace
    #[arg(long, short = 'C')]
    pub cgroup: bool,
    /// IPC namespace
    #[arg(long, short = 'i')]
    pub ipc: bool,
    /// mount namespace (`/` recursively private)
    #[arg(long, short = 'm')]
    pub mnt: bool,
    /// network namespace
    #[arg(long, short = 'n')]
    pub net: bool,
    /// time namespace
    #[arg(long, short = 'T')]
    pub time: bool,
    /// UTS namespace
    #[arg(long, short = 'u')]
    pub uts: bool,
    /// all six of the above
    #[arg(long)]
    pub all: bool,
}

impl RoomTypes {
    /// The types selected.
    pub fn spaces(&self) -> Spaces {
        if self.all {
            return Spaces::ROOMS;
        }
        [
            (self.cgroup, Spaces::CGROUP),
            (self.ipc, Spaces::IPC),
            (self.mnt, Spaces::MNT),
            (self.net, Spaces::NET),
            (self.time, Spaces::TIME),
            (self.uts, Spaces::UTS),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .fold(Spaces::empty(), |a, (_, f)| a | f)
    }
}

/// Room options: what the service does in the new namespaces before it
/// hands them out. Each needs its namespace type (and the policy's
/// permission).
#[derive(Debug, clap::Args)]
pub struct RoomOptionArgs {
    /// Bring lo up in the new network namespace (needs --net).
    #[arg(long, help_heading = "Room options")]
    pub loopback: bool,
    /// Host name of the new UTS namespace (needs --uts).
    #[arg(
        long,
        value_name = "NAME",
        allow_hyphen_values = true,
        help_heading = "Room options"
    )]
    pub hostname: Option<String>,
    /// Domain name of the new UTS namespace (needs --uts).
    #[arg(
        long,
        value_name = "NAME",
        allow_hyphen_values = true,
        help_heading = "Room options"
    )]
    pub domainname: Option<String>,
    /// Offset of CLOCK_MONOTONIC in the new time namespace, in seconds
    /// (fractions allowed, e.g. -1.5; needs --time).
    #[arg(
        long,
        value_name = "SECS",
        allow_hyphen_values = true,
        help_heading = "Room options"
    )]
    pub monotonic: Option<Offset>,
    /// Offset of CLOCK_BOOTTIME (and /proc/uptime) in the new time
    /// namespace, in seconds (fractions allowed; needs --time).
    #[arg(
        long,
        value_name = "SECS",
        allow_hyphen_values = true,
        help_heading = "Room options"
    )]
    pub boottime: Option<Offset>,
}

impl RoomOptionArgs {
    /// The options selected.
    pub fn options(&self) -> RoomOptions {
        RoomOptions {
            loopback_up: self.loopback,
            hostname: self.hostname.clone(),
            domainname: self.domainname.clone(),
            monotonic_offset: self.monotonic,
            boottime_offset: self.boottime,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy file as spacer-broker loads it (its owner and mode
    /// too: owned by root, writable by root only); print a summary of each
    /// rule and warnings.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Show which rule decides for a peer, what it may do and the limits
    /// that apply (the broker's default caps where the policy sets none).
    Explain {
        /// The policy file.
        file: PathBuf,
        /// The peer's uid.
        #[arg(long)]
        uid: u32,
        /// The peer's gids (primary first; repeat for supplementary groups).
        /// Without it, the groups a login of that uid's user has (its
        /// primary group and those /etc/group lists it in).
        #[arg(long = "gid", value_name = "GID")]
        gids: Vec<u32>,
    },
}

/// The exit status of `spacer`, for its manual pages: (status, meaning).
pub const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success."),
    (
        "1",
        "An error: the broker cannot be reached, the request is invalid, \
         making the namespaces failed, the service is unavailable, or a \
         policy file is invalid or not one the broker would load.",
    ),
    ("2", "A usage error: the command line is wrong."),
    (
        "3",
        "Denied by the policy; the broker's reason is on standard error as \
         \"spacer: denied: REASON\".",
    ),
    (
        "other",
        "spacer run exits with the command's status: 128+N when signal N \
         ended it, 127 when the command is not there, 126 when it cannot be \
         executed.",
    ),
];

/// The clap command, for manual pages and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
