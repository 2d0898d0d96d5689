//! Subspaces: a new user and/or PID namespace with a worker of its own.
//!
//! The subspace worker is a fork of the current worker (no exec): it
//! inherits the seccomp filter, no_new_privs and the non-dumpable flag, then
//! closes every fd but its channel, points its stdio at `/dev/null`, and
//! sets itself up.
//!
//! Started by the host worker for a requester (uid, gid): it takes the
//! requester's ids as its *effective* ids only — its real and saved uid stay
//! 0, so the requester can neither signal nor trace it while it sets up —,
//! opens its time offsets file (dumpable for that `open`), and calls
//! `unshare(CLONE_NEWUSER [| CLONE_NEWPID])`: the new user
//! namespace is owned by the requester. It reports `Ready` with its
//! namespace fds; the parent, which holds `CAP_SETUID`/`CAP_SETGID` (and
//! `CAP_SETFCAP` for a root requester), writes the maps `0 <uid> 1` and
//! `0 <gid> 1` with `setgroups` denied and says `Go`; the child then becomes
//! uid 0 inside (the requester on the host, in all three ids) and drops to
//! [`SUBSPACE_CAPS`](crate::confine::SUBSPACE_CAPS) inside its namespace.
//!
//! Started by a subspace worker (nested) or a private worker, the child is
//! already the requester: it writes its own maps and opens its time offsets
//! file, being dumpable for those (a process's `/proc/self` files are its
//! own only then).
//!
//! A PID namespace without a user namespace is made only for root (a
//! non-root requester could not enter one owned by the host's user
//! namespace). The subspace worker stays outside its new PID namespace,
//! which is handed out empty (by the pidfd ioctl, as `/proc` refuses empty
//! PID namespaces), so the requester's first process in it is its PID 1.
//!
//! The parent never waits for the child: once the child has made its user
//! namespace, the requester owns that namespace and may signal (stop) the
//! child. The parent keeps serving; the setup is finished when `Ready`
//! arrives, or the child is killed at [`SETUP_DEADLINE`].

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};
use nix::sys::prctl;
use nix::unistd::{getegid, geteuid, setgroups, setresgid, setresuid, Gid, Uid};
use spacer_proto::fd::{self, Which};
use spacer_proto::internal::{self, SubspaceGo, SubspaceReady};
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

/// How long a new subspace worker has to report `Ready`.
pub const SETUP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// A subspace worker started and not yet ready: its parent keeps serving
/// and finishes the setup when `Ready` arrives (or gives up at the
/// deadline). A parent must never block on it: the new process lives in a
/// user namespace the requester owns, so the requester can stop it.
pub struct Starting {
    /// The parent's end of the new worker's channel.
    pub channel: Channel,
    /// A pidfd of the new worker.
    pub pidfd: OwnedFd,
    /// Its pid.
    pub pid: i32,
    /// When to give up on it.
    pub deadline: std::time::Instant,
    spaces: Spaces,
    ids: Option<(u32, u32)>,
}

/// Starts a subspace worker. `ids` is the requester's (uid, gid) when the
/// caller is a host worker that must hand the new user namespace to them;
/// `None` in a subspace or private worker, which already runs as the
/// requester.
pub fn start(spaces: Spaces, ids: Option<(u32, u32)>) -> Result<Starting, SpawnError> {
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
            sys::child_exit(|| become_subspace(child_end, spaces, ids))
        }
        Cloned::Parent { pid, pidfd } => {
            drop(child_end);
            Ok(Starting {
                channel: parent_end,
                pidfd,
                pid,
                deadline: std::time::Instant::now() + SETUP_DEADLINE,
                spaces,
                ids,
            })
        }
    }
}

impl Starting {
    /// The new worker's `Ready` (or failure) can be read: finish the setup
    /// (write its maps if this is the host worker, say `Go`). Does not
    /// block beyond reading that one datagram.
    pub fn finish(self) -> Result<Spawned, SpawnError> {
        let result = finish_setup(&self.channel, self.pid, self.spaces, self.ids);
        match result {
            Ok((user, pidns)) => Ok(Spawned {
                channel: self.channel.into_fd(),
                pidfd: self.pidfd,
                pid: self.pid,
                user,
                pidns,
            }),
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    /// Gives up: kills the new worker (its pidfd pins it).
    pub fn abandon(self) {
        // ESRCH: it has gone already.
        let _ = fd::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
    }
}

type NsFds = (Option<OwnedFd>, Option<OwnedFd>);

/// The parent's side of the setup, once `Ready` is readable: write the maps
/// if it is the host worker, say `Go`.
fn finish_setup(
    chan: &Channel,
    pid: i32,
    spaces: Spaces,
    ids: Option<(u32, u32)>,
) -> Result<NsFds, SpawnError> {
    let mut buf = [0u8; 1024];
    let got = match chan.recv(&mut buf, 2) {
        Ok(Some(got)) => got,
        _ => return Err(SpawnError::Lost),
    };
    let (user, pidns) = match internal::decode::<SubspaceReady>(&buf[..got.len]) {
        Ok(SubspaceReady::Ready { user, pid: has_pid })
            if ready_fds_match(&got.fds, user, has_pid) =>
        {
            let mut fds = got.fds.into_iter();
            let user = if user { fds.next() } else { None };
            let pidns = if has_pid { fds.next() } else { None };
            (user, pidns)
        }
        Ok(SubspaceReady::Failed { reason }) => return Err(SpawnError::Setup(reason)),
        _ => return Err(SpawnError::Lost),
    };
    if let (true, Some((uid, gid))) = (spaces.contains(Spaces::USER), ids) {
        write_child_maps(pid, uid, gid).map_err(SpawnError::Setup)?;
    }
    chan.send(&internal::encode(&SubspaceGo::Go), &[])
        .map_err(|_| SpawnError::Lost)?;
    Ok((user, pidns))
}

/// The host worker writes a new subspace worker's maps: `setgroups` `deny`,
/// `0 <uid> 1`, `0 <gid> 1`. It may (CAP_SETUID, CAP_SETGID in the parent
/// namespace); mapping uid 0 also takes CAP_SETFCAP, raised for the three
/// opens only.
fn write_child_maps(pid: i32, uid: u32, gid: u32) -> Result<(), String> {
    use caps::{CapSet, Capability};
    let root = uid == 0 || gid == 0;
    if root {
        caps::raise(None, CapSet::Effective, Capability::CAP_SETFCAP)
            .map_err(|e| format!("raising CAP_SETFCAP: {e}"))?;
    }
    let result = (|| {
        write_proc(&format!("/proc/{pid}/setgroups"), "deny")?;
        write_proc(&format!("/proc/{pid}/uid_map"), &format!("0 {uid} 1"))?;
        write_proc(&format!("/proc/{pid}/gid_map"), &format!("0 {gid} 1"))
    })();
    if root {
        let _ = caps::drop(None, CapSet::Effective, Capability::CAP_SETFCAP);
    }
    result
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

/// The new process: set up, report, wait for `Go`, serve. Returns the exit
/// code.
fn become_subspace(channel: Channel, spaces: Spaces, ids: Option<(u32, u32)>) -> i32 {
    // Nothing of the parent's but the channel: no broker channel, no homes,
    // and not the broker's stderr (the audit log): this process will run as
    // the requester.
    if sys::close_fds_except(channel.as_raw_fd()).is_err() || sys::stdio_to_dev_null().is_err() {
        return 1;
    }
    match setup(spaces, ids) {
        Ok((user, pidns, offsets_file)) => {
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
            // Wait for the parent (it writes our maps if we cannot).
            let mut buf = [0u8; 64];
            match channel.recv(&mut buf, 0) {
                Ok(Some(got)) if internal::decode::<SubspaceGo>(&buf[..got.len]).is_ok() => {}
                _ => return 1,
            }
            if spaces.contains(Spaces::USER) {
                if let Err(e) = become_root_inside() {
                    eprintln!("spacer-worker: {e}");
                    return 1;
                }
            }
            serve::serve(channel, serve::Role::Subspace, offsets_file)
        }
        Err(reason) => {
            let _ = channel.send(&internal::encode(&SubspaceReady::Failed { reason }), &[]);
            1
        }
    }
}

/// The new user and PID namespaces, and the time offsets file.
type SetupResult = Result<(Option<OwnedFd>, Option<OwnedFd>, Option<File>), String>;

fn setup(spaces: Spaces, ids: Option<(u32, u32)>) -> SetupResult {
    let fail = |what: &str, e: Errno| format!("{what}: {}", errno_text(e));
    let pid_flag = if spaces.contains(Spaces::PID) {
        CloneFlags::CLONE_NEWPID
    } else {
        CloneFlags::empty()
    };
    let mut offsets_file = None;
    if spaces.contains(Spaces::USER) {
        match ids {
            Some((uid, gid)) => {
                take_effective_ids(uid, gid).map_err(|(w, e)| fail(w, e))?;
                offsets_file = open_offsets_as_requester()?;
            }
            None => map_own_root_if_needed(),
        }
        let (outer_uid, outer_gid) = (geteuid().as_raw(), getegid().as_raw());
        unshare(CloneFlags::CLONE_NEWUSER | pid_flag)
            .map_err(|e| fail("creating the user namespace", e))?;
        if ids.is_none() {
            offsets_file = write_own_maps(outer_uid, outer_gid)?;
        }
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
    Ok((user, pidns, offsets_file))
}

/// Takes the requester's ids as the *effective* ids only (real and saved
/// stay 0: the requester cannot signal or trace this process), so that the
/// user namespace made next is owned by the requester. The effective set is
/// cleared by the switch; only `CAP_SYS_ADMIN` is raised again (hosts that
/// forbid unprivileged user namespaces require it for the `unshare`).
fn take_effective_ids(uid: u32, gid: u32) -> Result<(), (&'static str, Errno)> {
    use caps::{CapSet, Capability};
    setgroups(&[]).map_err(|e| ("dropping supplementary groups", e))?;
    setresgid(Gid::from_raw(0), Gid::from_raw(gid), Gid::from_raw(0))
        .map_err(|e| ("taking the requester's gid", e))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(uid), Uid::from_raw(0))
        .map_err(|e| ("taking the requester's uid", e))?;
    let need: caps::CapsHashSet = [Capability::CAP_SYS_ADMIN].into_iter().collect();
    caps::set(None, CapSet::Effective, &need)
        .map_err(|_| ("raising CAP_SYS_ADMIN", Errno::EPERM))?;
    Ok(())
}

/// After the maps exist: uid and gid 0 inside (all three ids), which are the
/// requester's on the host, and only [`SUBSPACE_CAPS`](confine::SUBSPACE_CAPS).
fn become_root_inside() -> Result<(), String> {
    let fail = |what: &str, e: Errno| format!("{what}: {}", errno_text(e));
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(|e| fail("becoming gid 0 in the user namespace", e))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(|e| fail("becoming uid 0 in the user namespace", e))?;
    confine::keep_only(&confine::SUBSPACE_CAPS, &confine::SUBSPACE_EFFECTIVE)
        .map_err(|e| e.to_string())
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
/// these three writes (and to open its time offsets file, returned),
/// while it holds no capability outside the new namespace.
fn write_own_maps(uid: u32, gid: u32) -> Result<Option<File>, String> {
    prctl::set_dumpable(true).map_err(|e| format!("becoming dumpable: {}", errno_text(e)))?;
    let result = (|| {
        write_proc("/proc/self/setgroups", "deny")?;
        write_proc("/proc/self/uid_map", &format!("0 {uid} 1"))?;
        write_proc("/proc/self/gid_map", &format!("0 {gid} 1"))
    })();
    // Opened with all capabilities in the new namespace, which owns every
    // time namespace this worker will make. If it fails, a request for
    // offsets says why.
    let offsets_file = crate::prepare::open_offsets_file().ok();
    prctl::set_dumpable(false).map_err(|e| format!("becoming non-dumpable: {}", errno_text(e)))?;
    result.map(|()| offsets_file)
}

/// Opens this process's time offsets file
/// ([`open_offsets_file`](crate::prepare::open_offsets_file)) once its
/// effective ids are the requester's, being dumpable for that one `open`
/// (its `/proc/self` files are then the requester's, so the open needs no
/// capability). Its real and saved uids are still 0: the requester can
/// neither trace nor signal it meanwhile. The kernel lets the file set
/// offsets of time namespaces owned by a user namespace the requester owns
/// as a child of the host's, which is every one this worker will make. If
/// the open fails, a request for offsets says why.
fn open_offsets_as_requester() -> Result<Option<File>, String> {
    prctl::set_dumpable(true).map_err(|e| format!("becoming dumpable: {}", errno_text(e)))?;
    let file = crate::prepare::open_offsets_file().ok();
    prctl::set_dumpable(false).map_err(|e| format!("becoming non-dumpable: {}", errno_text(e)))?;
    Ok(file)
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
