//! Subspaces: a new user and/or PID namespace with a worker of its own.
//!
//! The subspace worker is a fork of the current worker (no exec): it
//! inherits the seccomp filter, no_new_privs and the non-dumpable flag, then
//! closes every fd but its channel and sets itself up:
//!
//! * with a user namespace: when started by the host worker it first takes
//!   the requester's uid and gid (keeping its capabilities across the switch
//!   with `PR_SET_KEEPCAPS`, so that hosts that forbid unprivileged user
//!   namespaces still allow it), then `unshare(CLONE_NEWUSER [| CLONE_NEWPID])`
//!   — the new user namespace is owned by the requester — writes its own
//!   maps `0 <uid> 1` with `setgroups` denied, becomes root inside, and
//!   drops to [`SUBSPACE_CAPS`](crate::confine::SUBSPACE_CAPS) there;
//! * PID only: `unshare(CLONE_NEWPID)`.
//!
//! The subspace worker stays *outside* its new PID namespace: the namespace
//! is handed out empty (by the pidfd ioctl, as `/proc` refuses empty PID
//! namespaces), so the first process the requester starts in it is its PID 1.
//! It reports `Ready` with its namespace fds to its parent, which answers the
//! broker with the channel, a pidfd and those fds.

use std::fmt;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};
use nix::sys::prctl;
use nix::unistd::{getegid, geteuid, setgroups, setresgid, setresuid, Gid, Uid};
use spacer_proto::fd::{self, Which};
use spacer_proto::internal::{self, SubspaceReady};
use spacer_proto::{Channel, NsType, Spaces};

use crate::confine;
use crate::maker::errno_text;
use crate::serve;
use crate::sys::{self, Cloned};

/// A started subspace worker, as its parent hands it to the broker.
pub struct Spawned {
    /// The broker's end of the subspace worker's channel.
    pub channel: OwnedFd,
    /// A pidfd of the subspace worker.
    pub pidfd: OwnedFd,
    /// Its pid (for logs).
    pub pid: i32,
    /// The new user namespace, if asked for.
    pub user: Option<OwnedFd>,
    /// The new, empty PID namespace, if asked for.
    pub pidns: Option<OwnedFd>,
}

/// Why a subspace could not be made.
#[derive(Debug)]
pub enum SpawnError {
    /// Creating the channel or the process failed.
    Start(&'static str, Errno),
    /// The new subspace worker reported a failed setup step.
    Setup(String),
    /// The new subspace worker ended or answered nonsense during setup.
    Lost,
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::Start(what, e) => write!(f, "{what}: {}", errno_text(*e)),
            SpawnError::Setup(reason) => f.write_str(reason),
            SpawnError::Lost => f.write_str("the subspace worker ended during setup"),
        }
    }
}

/// Starts a subspace worker. `ids` is the requester's (uid, gid) when the
/// caller is a host worker that must hand the new user namespace to them;
/// `None` in a subspace worker, which already runs as the requester.
pub fn spawn(spaces: Spaces, ids: Option<(u32, u32)>) -> Result<Spawned, SpawnError> {
    let (parent_end, child_end) = Channel::pair().map_err(|e| {
        SpawnError::Start(
            "creating the subspace channel",
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    })?;
    let cloned = sys::clone_with_pidfd().map_err(|e| {
        SpawnError::Start(
            "starting the subspace worker",
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    })?;
    match cloned {
        Cloned::Child => {
            drop(parent_end);
            std::process::exit(become_subspace(child_end, spaces, ids))
        }
        Cloned::Parent { pid, pidfd } => {
            drop(child_end);
            let mut buf = [0u8; 1024];
            let got = match parent_end.recv(&mut buf, 2) {
                Ok(Some(got)) => got,
                _ => return Err(SpawnError::Lost),
            };
            match internal::decode::<SubspaceReady>(&buf[..got.len]) {
                Ok(SubspaceReady::Ready { user, pid: has_pid })
                    if ready_fds_match(&got.fds, user, has_pid) =>
                {
                    let mut fds = got.fds.into_iter();
                    let user = if user { fds.next() } else { None };
                    let pidns = if has_pid { fds.next() } else { None };
                    Ok(Spawned {
                        channel: parent_end.into_fd(),
                        pidfd,
                        pid,
                        user,
                        pidns,
                    })
                }
                Ok(SubspaceReady::Failed { reason }) => Err(SpawnError::Setup(reason)),
                _ => Err(SpawnError::Lost),
            }
        }
    }
}

fn ready_fds_match(fds: &[OwnedFd], user: bool, pid: bool) -> bool {
    let want: Vec<NsType> = [(user, NsType::User), (pid, NsType::Pid)]
        .into_iter()
        .filter_map(|(w, t)| w.then_some(t))
        .collect();
    want.len() == fds.len()
        && want
            .iter()
            .zip(fds)
            .all(|(t, fd)| fd::namespace_type(fd.as_fd()).ok() == Some(*t))
}

/// The new process: set up, report, serve. Returns the exit code.
fn become_subspace(channel: Channel, spaces: Spaces, ids: Option<(u32, u32)>) -> i32 {
    // Nothing of the parent's but the channel: no broker channel, no homes,
    // and not the broker's stderr (the audit log): this process will run as
    // the requester.
    if sys::close_fds_except(channel.as_raw_fd()).is_err() || sys::stdio_to_dev_null().is_err() {
        return 1;
    }
    match setup(spaces, ids) {
        Ok((user, pidns)) => {
            let ready = SubspaceReady::Ready {
                user: user.is_some(),
                pid: pidns.is_some(),
            };
            let fds: Vec<BorrowedFd<'_>> =
                user.iter().chain(pidns.iter()).map(|f| f.as_fd()).collect();
            if channel.send(&internal::encode(&ready), &fds).is_err() {
                return 1;
            }
            drop((user, pidns));
            serve::serve(channel, serve::Role::Subspace)
        }
        Err(reason) => {
            let _ = channel.send(&internal::encode(&SubspaceReady::Failed { reason }), &[]);
            1
        }
    }
}

type SetupResult = Result<(Option<OwnedFd>, Option<OwnedFd>), String>;

fn setup(spaces: Spaces, ids: Option<(u32, u32)>) -> SetupResult {
    let fail = |what: &str, e: Errno| format!("{what}: {}", errno_text(e));
    let pid_flag = if spaces.contains(Spaces::PID) {
        CloneFlags::CLONE_NEWPID
    } else {
        CloneFlags::empty()
    };
    if spaces.contains(Spaces::USER) {
        match ids {
            Some((uid, gid)) => become_requester(uid, gid).map_err(|(w, e)| fail(w, e))?,
            None => map_own_root_if_needed(),
        }
        let (outer_uid, outer_gid) = (geteuid().as_raw(), getegid().as_raw());
        unshare(CloneFlags::CLONE_NEWUSER | pid_flag)
            .map_err(|e| fail("creating the user namespace", e))?;
        write_own_maps(outer_uid, outer_gid)?;
        setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .map_err(|e| fail("becoming gid 0 in the user namespace", e))?;
        setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .map_err(|e| fail("becoming uid 0 in the user namespace", e))?;
        confine::keep_only(&confine::SUBSPACE_CAPS, &confine::SUBSPACE_CAPS)
            .map_err(|e| e.to_string())?;
    } else {
        unshare(pid_flag).map_err(|e| fail("creating the PID namespace", e))?;
    }
    let me =
        fd::pidfd_open(std::process::id() as i32).map_err(|e| format!("opening own pidfd: {e}"))?;
    let user = if spaces.contains(Spaces::USER) {
        Some(
            fd::pidfd_namespace(me.as_fd(), NsType::User, Which::Current)
                .map_err(|e| format!("opening the new user namespace: {e}"))?,
        )
    } else {
        None
    };
    let pidns = if spaces.contains(Spaces::PID) {
        Some(
            fd::pidfd_namespace(me.as_fd(), NsType::Pid, Which::ForChildren).map_err(|e| {
                format!("opening the new PID namespace (needs Linux 6.11 or later): {e}")
            })?,
        )
    } else {
        None
    };
    Ok((user, pidns))
}

/// Takes the requester's ids, keeping the worker's capabilities across the
/// switch so that `unshare(CLONE_NEWUSER)` works where unprivileged user
/// namespaces are forbidden. Only a fresh subspace worker does this, never
/// the worker itself (whose uid a requester could then signal).
fn become_requester(uid: u32, gid: u32) -> Result<(), (&'static str, Errno)> {
    prctl::set_keepcaps(true).map_err(|e| ("keeping capabilities", e))?;
    setgroups(&[]).map_err(|e| ("dropping supplementary groups", e))?;
    let g = Gid::from_raw(gid);
    setresgid(g, g, g).map_err(|e| ("taking the requester's gid", e))?;
    let u = Uid::from_raw(uid);
    setresuid(u, u, u).map_err(|e| ("taking the requester's uid", e))?;
    prctl::set_keepcaps(false).map_err(|e| ("resetting keep-capabilities", e))?;
    // The switch cleared the effective set. What the unshare needs:
    // CAP_SYS_ADMIN (hosts that forbid unprivileged user namespaces), and
    // CAP_SETFCAP only to map uid 0 (a root requester); everything else goes.
    use caps::{CapSet, Capability};
    let mut need = vec![Capability::CAP_SYS_ADMIN];
    if uid == 0 {
        need.push(Capability::CAP_SETFCAP);
    }
    let need: caps::CapsHashSet = need.into_iter().collect();
    caps::set(None, CapSet::Effective, &need)
        .map_err(|_| ("raising capabilities", Errno::EPERM))?;
    caps::set(None, CapSet::Permitted, &need)
        .map_err(|_| ("dropping capabilities", Errno::EPERM))?;
    Ok(())
}

/// A process that stays itself and is uid 0 (a root private worker, or a
/// subspace worker, root of its own namespace) maps uid 0 of its parent
/// namespace: that needs `CAP_SETFCAP` effective at `unshare`. Raised from
/// the permitted set if it is there; otherwise the map write reports it.
fn map_own_root_if_needed() {
    use caps::{CapSet, Capability};
    if geteuid().is_root()
        && caps::has_cap(None, CapSet::Permitted, Capability::CAP_SETFCAP).unwrap_or(false)
    {
        let _ = caps::raise(None, CapSet::Effective, Capability::CAP_SETFCAP);
    }
}

/// Writes `0 <uid> 1` and `0 <gid> 1` (after `setgroups` `deny`) for this
/// process's new user namespace. A process may map only its own ids; it
/// must be dumpable for its `/proc/self` files to be its own, so it is for
/// these three writes, while it holds no capability outside the new
/// namespace.
fn write_own_maps(uid: u32, gid: u32) -> Result<(), String> {
    prctl::set_dumpable(true).map_err(|e| format!("becoming dumpable: {}", errno_text(e)))?;
    let result = (|| {
        write_proc("/proc/self/setgroups", "deny")?;
        write_proc("/proc/self/uid_map", &format!("0 {uid} 1"))?;
        write_proc("/proc/self/gid_map", &format!("0 {gid} 1"))
    })();
    prctl::set_dumpable(false).map_err(|e| format!("becoming non-dumpable: {}", errno_text(e)))?;
    result
}

fn write_proc(path: &str, content: &str) -> Result<(), String> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("opening {path}: {}", errno_text(e)))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(content.as_bytes())
        .map_err(|e| format!("writing {path}: {e}"))
}
