//! # spacer-tests
//!
//! The harness of the end-to-end tests in `tests/`: start the real
//! `spacer-broker` (which starts the real `spacer-worker`) on a temporary
//! socket with a test policy, play clients as root and as other uids, and
//! look at the real processes through `/proc`.
//!
//! Binaries are taken from the cargo target directory of the running test
//! (`cargo test --workspace` builds them all before any test runs). Anything
//! another uid must reach — the socket, a copy of `spacer` — lives in a
//! temporary directory with mode 0755, since the checkout may not be
//! reachable for other uids.

#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use serde_json::Value;
use spacer_client::Client;

/// A uid/gid no account uses, for playing an unknown unprivileged peer.
pub const STRANGER: u32 = 4242;
/// Another one, for a peer that the test policy names.
pub const TENANT: u32 = 4343;

/// The directory holding the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    dir.to_owned()
}

/// The path of a workspace binary; panics with what to run if it is missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run the whole suite with `cargo test --workspace`, which builds every binary",
        p.display()
    );
    p
}

/// Panics unless running as root (CI is root; the tests make namespaces
/// and switch uids).
pub fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "end-to-end tests need root (CI runs as root)"
    );
}

/// Polls `f` until it is true or `timeout` passes; returns the last result.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the process behind `pidfd` exits within `timeout` (a pidfd
/// polls readable once its process has exited).
pub fn exits_within(pidfd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    matches!(poll(&mut [PollFd::new(pidfd, PollFlags::POLLIN)], ms), Ok(n) if n > 0)
}

/// Open fds of a process.
pub fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// What each open fd of a process points to (for failure messages).
pub fn fd_links(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    format!(
                        "{} -> {}",
                        e.file_name().to_string_lossy(),
                        fs::read_link(e.path())
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A line of `/proc/PID/status`, value only.
pub fn status(pid: i32, key: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    status(pid, "VmRSS")
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Child pids of a process.
pub fn children(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Whether a process is the spawner (by its name).
pub fn is_spawner(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "spacer-spawner")
}

/// `type -> target` of `/proc/PID/ns/*`, sorted.
pub fn ns_links(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(format!("/proc/{pid}/ns"))
        .expect("ns dir")
        .filter_map(|e| e.ok())
        .map(|e| {
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                fs::read_link(e.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )
        })
        .collect();
    v.sort();
    v
}

/// The inode of one of this process's namespaces.
pub fn my_ns_inode(name: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/self/ns/{name}"))
        .expect("own namespace")
        .ino()
}

/// A temporary directory with mode 0755, reachable by every uid.
pub fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("spacer-test")
        .tempdir()
        .expect("temp dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Copies a workspace binary into `dir` (mode 0755), for other uids.
pub fn copy_bin_to(dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    if !dst.exists() {
        // Copied by another process: a copy made here would hold the file
        // open for writing, and a child another test thread forks in that
        // moment inherits it until its exec, so that running the copy fails
        // with ETXTBSY (seen through setpriv, which cannot retry).
        let status = Command::new("install")
            .args(["-m", "0755"])
            .arg(bin(name))
            .arg(&dst)
            .status()
            .expect("install (coreutils)");
        assert!(status.success(), "copying {name}: {status}");
    }
    dst
}

/// Runs the test probe (copied into `dir`) as `uid`/`gid` with `env`;
/// returns its JSON output, or what went wrong.
pub fn probe_in(
    dir: &Path,
    uid: u32,
    gid: u32,
    args: &[&str],
    env: &[(&str, &Path)],
) -> Result<Value, String> {
    let exe = copy_bin_to(dir, "spacer-probe");
    let mut cmd = Command::new(exe);
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if uid != 0 {
        cmd.uid(uid).gid(gid);
    }
    let out = output_retrying(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "probe {args:?} failed ({}): {}\n{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_str(stdout.trim()).map_err(|e| format!("probe output {stdout:?}: {e}"))
}

/// Runs `start` (a spawn or a run of a command), retrying while its freshly
/// copied binary is still open for writing in a child that another test
/// thread forked (`ETXTBSY`).
fn retrying<T>(mut start: impl FnMut() -> std::io::Result<T>) -> T {
    for _ in 0..50 {
        match start() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r.expect("start a test binary"),
        }
    }
    panic!("binary stayed busy");
}

/// A child process killed and reaped when dropped, also when the test
/// panics before it ends it.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns a command, retrying while its binary is busy (see [`retrying`]).
pub fn spawn_retrying(cmd: &mut Command) -> Child {
    retrying(|| cmd.spawn())
}

/// Runs a command, retrying while its binary is busy (see [`retrying`]).
pub fn output_retrying(cmd: &mut Command) -> Output {
    retrying(|| cmd.output())
}

/// `uid` and `gid` of a command in one call, both `id`.
pub trait UidGid {
    /// Runs the command as uid and gid `id`.
    fn uid_gid(&mut self, id: u32) -> &mut Self;
}

impl UidGid for Command {
    fn uid_gid(&mut self, id: u32) -> &mut Self {
        use std::os::unix::process::CommandExt;
        self.uid(id).gid(id)
    }
}

/// A running broker on a temporary socket.
pub struct Broker {
    child: Child,
    dir: tempfile::TempDir,
    /// The socket.
    pub socket: PathBuf,
    log: PathBuf,
}

impl Broker {
    /// Starts the broker with `policy` and waits until it serves.
    pub fn start(policy: &str) -> Broker {
        Broker::start_with(policy, &[])
    }

    /// Starts the broker with `policy` and extra arguments.
    pub fn start_with(policy: &str, extra: &[&str]) -> Broker {
        Broker::start_wrapped(policy, extra, &[])
    }

    /// A 0755 temporary directory with `policy` in it (0644), and where the
    /// socket and the log go.
    fn prepare(policy: &str) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        need_root();
        let dir = tempfile::Builder::new()
            .prefix("spacer-test")
            .tempdir()
            .expect("temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let policy_path = dir.path().join("policy.toml");
        fs::write(&policy_path, policy).expect("write policy");
        fs::set_permissions(&policy_path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let socket = dir.path().join("spacer.sock");
        let log = dir.path().join("broker.log");
        (dir, policy_path, socket, log)
    }

    /// Waits until the broker says it serves.
    fn started(self) -> Broker {
        let up = eventually(Duration::from_secs(10), || {
            self.events().iter().any(|e| e["event"] == "start")
        });
        assert!(up, "broker did not start; log:\n{}", self.log_text());
        self
    }

    /// Starts the broker with `policy` and extra arguments through
    /// `wrapper` (a command that execs the rest of its arguments, such as
    /// `unshare --mount --`); its pid is then the broker's.
    pub fn start_wrapped(policy: &str, extra: &[&str], wrapper: &[&str]) -> Broker {
        let (dir, policy_path, socket, log) = Broker::prepare(policy);
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin("spacer-broker"));
                c
            }
            None => Command::new(bin("spacer-broker")),
        };
        let child = cmd
            .arg("--socket")
            .arg(&socket)
            .arg("--policy")
            .arg(&policy_path)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start spacer-broker");
        Broker {
            child,
            dir,
            socket,
            log,
        }
        .started()
    }

    /// Starts the broker as root of a user namespace of its own that maps
    /// the host's ids 0-65535 to themselves (owned by root), after `setup`
    /// (a shell command) ran there as root, e.g. to lower
    /// `/proc/sys/user/max_net_namespaces`, which then limits each uid
    /// inside separately.
    pub fn start_in_user_ns(policy: &str, setup: &str) -> Broker {
        let (dir, policy_path, socket, log) = Broker::prepare(policy);
        // unshare makes the namespace and execs sh, which waits until the
        // maps are written; the next sh (exec'd as mapped root, so with every
        // capability in the namespace) runs `setup`, then execs the broker.
        let mut child = Command::new("unshare")
            .args(["--user", "--", "sh", "-c", "read _ && exec \"$@\"", "sh"])
            .args(["sh", "-c", &format!("{setup} && exec \"$@\""), "sh"])
            .arg(bin("spacer-broker"))
            .arg("--socket")
            .arg(&socket)
            .arg("--policy")
            .arg(&policy_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start unshare");
        let pid = child.id();
        let mine = fs::read_link("/proc/self/ns/user").expect("own user ns");
        let moved = eventually(Duration::from_secs(5), || {
            fs::read_link(format!("/proc/{pid}/ns/user")).is_ok_and(|l| l != mine)
        });
        assert!(moved, "unshare did not make a user namespace");
        for map in ["uid_map", "gid_map"] {
            fs::write(format!("/proc/{pid}/{map}"), "0 0 65536").expect("write map");
        }
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(b"go\n").expect("release the broker");
        }
        Broker {
            child,
            dir,
            socket,
            log,
        }
        .started()
    }

    /// Runs the broker with `policy` expecting it to refuse to start;
    /// returns its exit code and log.
    pub fn refuses(policy: &str, mode: u32) -> (Option<i32>, String) {
        need_root();
        let dir = tempfile::tempdir().expect("temp dir");
        let policy_path = dir.path().join("policy.toml");
        fs::write(&policy_path, policy).expect("write policy");
        fs::set_permissions(&policy_path, fs::Permissions::from_mode(mode)).expect("chmod");
        let out = Command::new(bin("spacer-broker"))
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .arg("--policy")
            .arg(&policy_path)
            .stdin(Stdio::null())
            .output()
            .expect("run spacer-broker");
        // The `error` fields of the JSON log, or the raw text.
        let raw = String::from_utf8_lossy(&out.stderr).into_owned();
        let errors: Vec<String> = raw
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["error"].as_str().map(str::to_owned))
            .collect();
        (
            out.status.code(),
            if errors.is_empty() {
                raw
            } else {
                errors.join("\n")
            },
        )
    }

    /// The temporary directory (0755).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The worker supervisor's pid.
    pub fn supervisor_pid(&self) -> i32 {
        let kids = children(self.pid());
        assert_eq!(kids.len(), 1, "the broker has one child, the supervisor");
        kids[0]
    }

    /// The serving workers' pids (those that make rooms).
    pub fn worker_pids(&self) -> Vec<i32> {
        children(self.supervisor_pid())
            .into_iter()
            .filter(|&p| !is_spawner(p))
            .collect()
    }

    /// The spawner's pid: the worker that starts every subspace worker.
    pub fn spawner_pid(&self) -> i32 {
        let mut pids = Vec::new();
        eventually(Duration::from_secs(5), || {
            pids = children(self.supervisor_pid())
                .into_iter()
                .filter(|&p| is_spawner(p))
                .collect();
            pids.len() == 1
        });
        assert_eq!(pids.len(), 1, "one spawner: {pids:?}");
        pids[0]
    }

    /// Open fds of broker, supervisor, spawner and room workers.
    pub fn fd_counts(&self) -> Vec<usize> {
        let mut v = vec![
            fd_count(self.pid()),
            fd_count(self.supervisor_pid()),
            fd_count(self.spawner_pid()),
        ];
        v.extend(self.worker_pids().into_iter().map(fd_count));
        v
    }

    /// Waits until no service process holds more fds than `base` (from
    /// [`Broker::fd_counts`]); panics with both if that does not happen.
    pub fn assert_fds_back_to(&self, base: &[usize]) {
        let mut now = Vec::new();
        let ok = eventually(Duration::from_secs(5), || {
            now = self.fd_counts();
            now.len() == base.len() && now.iter().zip(base).all(|(n, b)| n <= b)
        });
        assert!(ok, "fds {base:?} -> {now:?}");
    }

    /// The live subspace workers (children of the spawner).
    pub fn subspace_workers(&self) -> Vec<i32> {
        children(self.spawner_pid())
    }

    /// The one serving worker (for tests that run with one).
    pub fn worker_pid(&self) -> i32 {
        let mut pids = Vec::new();
        eventually(Duration::from_secs(5), || {
            pids = self.worker_pids();
            pids.len() == 1
        });
        assert_eq!(pids.len(), 1, "one serving worker: {pids:?}");
        pids[0]
    }

    /// A library client as this process (root).
    pub fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect")
    }

    /// The log as text.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every JSON line of the log.
    pub fn events(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Audit decisions in the log.
    pub fn decisions(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["target"] == "spacer::audit" && e["message"] == "decision")
            .collect()
    }

    /// Copies a workspace binary into the 0755 directory, for other uids.
    pub fn copy_bin(&self, name: &str) -> PathBuf {
        copy_bin_to(self.dir(), name)
    }

    /// Runs the `spacer` command as `uid`/`gid` (no supplementary groups).
    pub fn spacer_as(&self, uid: u32, gid: u32, args: &[&str]) -> Output {
        let exe = self.copy_bin("spacer");
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env("SPACER_SOCKET", &self.socket)
            .current_dir(self.dir())
            .stdin(Stdio::null());
        if uid != 0 {
            cmd.uid(uid).gid(gid);
        }
        output_retrying(&mut cmd)
    }

    /// Runs the test probe as `uid`/`gid`; returns its JSON output.
    pub fn probe_as(&self, uid: u32, gid: u32, args: &[&str]) -> Value {
        let exe = self.copy_bin("spacer-probe");
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env("SPACER_SOCKET", &self.socket)
            .current_dir(self.dir())
            .stdin(Stdio::null());
        if uid != 0 {
            cmd.uid(uid).gid(gid);
        }
        let out = output_retrying(&mut cmd);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "probe {args:?} failed: {}\n{stdout}\nbroker log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("probe output {stdout:?}: {e}"))
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> Option<i32> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid()),
                nix::sys::signal::Signal::SIGTERM,
            );
            let done = eventually(Duration::from_secs(3), || {
                matches!(self.child.try_wait(), Ok(Some(_)))
            });
            if !done {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// [`TEST_POLICY`] with `mnt` for [`TENANT`] too.
pub fn test_policy_with_mnt() -> String {
    TEST_POLICY.replace(
        "allow = [\"net\", \"uts\", \"user\", \"pid\"]",
        "allow = [\"net\", \"uts\", \"user\", \"pid\", \"mnt\"]",
    )
}

/// A policy: root may have everything, uid [`TENANT`] only `net` plus
/// subspaces (user, pid) and uts, everyone else nothing.
pub const TEST_POLICY: &str = r#"
[defaults]
allow = []

[[rule]]
name = "root"
uid = 0
allow = ["cgroup", "ipc", "mnt", "net", "time", "uts", "user", "pid"]

[[rule]]
name = "tenant"
uid = 4343
allow = ["net", "uts", "user", "pid"]
"#;
