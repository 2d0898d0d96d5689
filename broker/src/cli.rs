//! The command line of `spacer-broker` (also used to generate its manual
//! page and shell completions).

use std::path::PathBuf;

/// The journal's socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// The journal's native fields when stderr is the journal
    /// (`$JOURNAL_STREAM`), else JSON lines on stderr.
    Auto,
    /// One JSON object per line on stderr.
    Json,
    /// Human-readable lines on stderr.
    Text,
    /// The journal's native protocol (each audit field a journal field).
    Journal,
}

/// `--seccomp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompArg {
    /// Kill the worker on a syscall outside its allow-list.
    Kill,
    /// Log such syscalls instead (development).
    Log,
}

/// Signals, files and systemd, for `--help` and the manual page.
const AFTER_HELP: &str = "\
Signals:
  SIGHUP   re-read the policy file; an invalid one keeps the old policy
           (logged as policy_reload_failed)
  SIGTERM, SIGINT
           stop accepting, give requests in flight a second, remove a
           socket file the broker created, stop the workers, exit 0

Files:
  /etc/spacer/policy.toml        the policy (spacer-policy(5)); without it,
                                 an embedded default: root may have
                                 everything, nobody else anything
  /run/spacer/spacer.sock        the socket (mode 0666: the policy decides)
  /usr/libexec/spacer/spacer-worker
                                 the privileged worker it starts

systemd:
  spacer.socket listens and starts spacer-broker.service (Type=notify) on
  the first connection; systemctl reload spacer-broker sends SIGHUP;
  systemctl restart spacer.socket restarts a running broker at once.
  Audit records are journal fields: journalctl -u spacer-broker
  DECISION=deny; journalctl -t spacer-broker never misses a record written
  just before an exit.";

/// Command line of `spacer-broker`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "spacer-broker",
    version,
    about = "Hands out Linux namespaces under an administrator's policy",
    after_long_help = AFTER_HELP
)]
pub struct Args {
    /// The socket to serve (ignored when systemd passes one).
    #[arg(long, default_value = "/run/spacer/spacer.sock", value_name = "PATH")]
    pub socket: PathBuf,
    /// The policy file [default: /etc/spacer/policy.toml, else the embedded
    /// default: root may have everything, nobody else anything].
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The user to run as after start-up [default: spacer, else nobody].
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Log and audit format: `auto` is the journal's native fields when
    /// stderr is the journal (systemd), JSON lines on stderr otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    pub log_format: LogFormat,
    /// The journal's socket (for `--log-format journal`).
    #[arg(long, hide = true, default_value = JOURNAL_SOCKET, value_name = "PATH")]
    pub journal_socket: PathBuf,
    /// The worker binary [default: spacer-worker next to this binary, else
    /// /usr/libexec/spacer/spacer-worker].
    #[arg(long, value_name = "PATH")]
    pub worker: Option<PathBuf>,
    /// Serving worker processes.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub workers: usize,
    /// Seconds a worker may take for one request before it is replaced.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub request_timeout: u64,
    /// Seconds a new connection has to send its first request.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub first_request_timeout: u64,
    /// Seconds an idle client connection stays open.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub idle_timeout: u64,
    /// Seconds a response may wait to be sent. A client that does not read
    /// its answers is not cut off: it gets the next one only after taking
    /// the last, and its connection, holding that one answer (whose fds the
    /// kernel charges to the broker until read), counts against its uid's
    /// connection cap.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub write_timeout: u64,
    /// Seconds between attempts to start a worker while the breaker is open
    /// (after 5 worker deaths within a minute).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub breaker_retry: u64,
    /// Open connections in all.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_connections: u32,
    /// Live subspaces in all (one connection may hold several).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_subspaces: u32,
    /// Open connections per uid where the policy sets no max_connections.
    #[arg(long, default_value_t = spacer_policy::DEFAULT_PER_UID_CAP, value_name = "N")]
    pub max_connections_per_uid: u32,
    /// Live subspaces per uid where the policy sets no max_subspaces.
    #[arg(long, default_value_t = spacer_policy::DEFAULT_PER_UID_CAP, value_name = "N")]
    pub max_subspaces_per_uid: u32,
    /// Live rooms of each type per uid where the policy sets no max_rooms
    /// (counted until the namespace is really gone, whoever holds it).
    #[arg(long, default_value_t = spacer_policy::DEFAULT_PER_UID_CAP, value_name = "N")]
    pub max_rooms_per_uid: u32,
    /// The subordinate uid file, read at each `map = "auto"` request.
    #[arg(long, default_value = "/etc/subuid", value_name = "FILE")]
    pub subuid: PathBuf,
    /// The subordinate gid file, likewise.
    #[arg(long, default_value = "/etc/subgid", value_name = "FILE")]
    pub subgid: PathBuf,
    /// Development: log syscalls outside the worker's allow-list instead of
    /// killing it (see `dmesg`).
    #[arg(long, value_enum, default_value = "kill")]
    pub seccomp: SeccompArg,
}

/// The exit status of `spacer-broker`, for its manual page: (status,
/// meaning).
pub const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Stopped by SIGTERM or SIGINT."),
    (
        "1",
        "Could not start (not started as root, an invalid policy or one not \
         owned by root and writable by root only, the socket in use, the \
         worker not starting), or had to stop (the worker supervisor \
         exited).",
    ),
    ("2", "A usage error: the command line is wrong."),
];

/// The clap command, for manual pages and completions.
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}
