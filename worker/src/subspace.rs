//! Subspaces: a new user and/or PID namespace with a worker of its own, a
//! fork of the current worker. Who does what, in which order and why:
//! docs/ARCHITECTURE.md, "Subspaces".

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;
use nix::fcntl::{open, openat, OFlag};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::{prctl, signal::Signal, stat::Mode};
use nix::unistd::{getegid, geteuid, setfsuid, setgroups, setresgid, setresuid, Gid, Uid};
use spacer_proto::fd::{self, Which};
use spacer_proto::internal::{SubspaceReady, Trust};
use spacer_proto::{Channel, IdMaps, NsType, Spaces};

use crate::maker::open_offsets_file_at;
use crate::privilege::{self, with_cap, SUBSPACE_CAPS, SUBSPACE_EFFECTIVE};
use crate::sys::{self, Ctx, Error};
use crate::Role;

/// How a subspace worker serves once set up
/// ([`crate::serve::narrow_and_serve`]).
pub type Serve = fn(Channel, Role, Option<File>) -> i32;

/// Why a setup failed when its worker ended or answered nonsense.
pub const LOST: &str = "the subspace worker ended during setup";

/// How long a new subspace worker has to report `Ready`.
pub const SETUP_DEADLINE: Duration = Duration::from_secs(2);

/// Who the new subspace worker is to become.
pub enum Requester {
    /// For the spawner: the requester's host ids, the parent subspace's
    /// user namespace (nested), and the requesting process's pidfd.
    Host {
        uid: u32,
        gid: u32,
        parent: Option<OwnedFd>,
        caller: Option<OwnedFd>,
    },
    /// A private worker or a subspace worker below one: already the
    /// requester.
    Own,
}

/// A started subspace worker, not yet ready. Its parent must never block
/// on it: the requester may stop it.
pub struct Starting {
    /// The parent's end of the new worker's channel.
    pub channel: Channel,
    pub pidfd: OwnedFd,
    pub pid: i32,
    /// When to give up on it.
    pub deadline: Instant,
}

/// The new user and PID namespaces.
pub type NsFds = (Option<OwnedFd>, Option<OwnedFd>);

/// Starts a subspace worker for `requester`.
pub fn start(
    spaces: Spaces,
    requester: Requester,
    maps: Option<IdMaps>,
    serve: Serve,
) -> Result<Starting, Error> {
    let ctx = (
        "creating the subspace channel",
        "starting the subspace worker",
    );
    let (channel, pid, pidfd) = sys::fork_with_channel(ctx, |child_end| {
        become_subspace(child_end, spaces, requester, maps, serve)
    })?;
    let deadline = Instant::now() + SETUP_DEADLINE;
    Ok(Starting {
        channel,
        pidfd,
        pid,
        deadline,
    })
}

impl Starting {
    /// Reads the `Ready` (or failure) that has arrived. The new worker runs
    /// as the requester: its fds are checked by kind.
    pub fn ready(&self) -> Result<NsFds, Error> {
        let mut buf = vec![0u8; spacer_proto::internal::MAX_BYTES];
        match self
            .channel
            .recv_msg::<SubspaceReady>(&mut buf, Trust::Kinds)
        {
            Ok(Some((SubspaceReady::Ready { user, pid }, fds))) => {
                let mut fds = fds.into_iter();
                let user = if user { fds.next() } else { None };
                Ok((user, if pid { fds.next() } else { None }))
            }
            Ok(Some((SubspaceReady::Failed { reason }, _))) => Err(Error::msg(reason)),
            _ => Err(Error::msg(LOST)),
        }
    }

    /// Gives up: kills the new worker (its pidfd pins it).
    pub fn abandon(self) {
        privilege::kill(self.pidfd.as_fd());
    }
}

/// The new process: set up, report, serve. Returns the exit code.
fn become_subspace(
    channel: Channel,
    spaces: Spaces,
    requester: Requester,
    maps: Option<IdMaps>,
    serve: Serve,
) -> i32 {
    // Nothing of the parent's but the channel and the request's fds; stdio
    // not the service's: this process will run as the requester.
    let mut keep = vec![channel.as_raw_fd()];
    if let Requester::Host { parent, caller, .. } = &requester {
        keep.extend(parent.iter().chain(caller).map(|f| f.as_raw_fd()));
    }
    // SAFETY: a fresh child that never returns to the frames owning the
    // other fds.
    #[allow(unsafe_code)]
    let closed = unsafe { sys::close_fds_except(&keep) };
    if closed.is_err() || sys::stdio_to_dev_null().is_err() {
        return 1;
    }
    let _ = prctl::set_name(c"spacer-subspace");
    let (role, inside) = match &requester {
        Requester::Host { parent, .. } => (
            Role::HostSubspace,
            spaces.contains(Spaces::USER) || parent.is_some(),
        ),
        Requester::Own => (Role::Subspace, spaces.contains(Spaces::USER)),
    };
    // Its ids inside: the requester's, as the maps name them.
    let ids = maps
        .as_ref()
        .map_or((0, 0), |m| (m.uid[0].inside, m.gid[0].inside));
    let (user, pidns, offsets_file) = match setup(spaces, requester, maps.as_ref(), ids) {
        Ok(made) => made,
        Err(e) => {
            let reason = e.to_string();
            let _ = channel.send_msg(&SubspaceReady::Failed { reason }, &[]);
            return 1;
        }
    };
    let ready = SubspaceReady::Ready {
        user: user.is_some(),
        pid: pidns.is_some(),
    };
    let fds: Vec<BorrowedFd<'_>> = user.iter().chain(&pidns).map(|f| f.as_fd()).collect();
    if channel.send_msg(&ready, &fds).is_err() {
        return 1;
    }
    drop((user, pidns));
    if inside {
        if let Err(e) = become_inside(ids) {
            eprintln!("spacer-worker: {e}");
            return 1;
        }
    }
    serve(channel, role, offsets_file)
}

/// The new user and PID namespaces, and the time offsets file.
type Made = (Option<OwnedFd>, Option<OwnedFd>, Option<File>);

/// Makes a subspace's namespaces; `(uid_in, gid_in)`: the ids the worker
/// will have inside.
fn setup(
    spaces: Spaces,
    requester: Requester,
    maps: Option<&IdMaps>,
    (uid_in, gid_in): (u32, u32),
) -> Result<Made, Error> {
    let own = matches!(requester, Requester::Own);
    let (want_user, want_pid) = (spaces.contains(Spaces::USER), spaces.contains(Spaces::PID));
    let mut joined = false;
    // Opened before it may join the requester's mount namespace, where the
    // requester may decide what paths mean: every /proc file goes through it.
    let proc =
        open("/proc", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).ctx("opening /proc")?;
    // Subordinate ids: written by a child that stays root on the host.
    let writer = match maps {
        Some(m) if m.has_subordinate_ids() => Some(start_map_writer(proc.as_fd(), m)?),
        _ => None,
    };
    match requester {
        Requester::Host {
            uid,
            gid,
            parent,
            caller,
        } => {
            if let Some(caller) = caller {
                // Still root on the host: the requester's mount and UTS
                // namespaces, and its PID namespace for this one's children.
                let pid = want_pid.then_some(CloneFlags::CLONE_NEWPID);
                for t in [CloneFlags::CLONE_NEWNS, CloneFlags::CLONE_NEWUTS]
                    .into_iter()
                    .chain(pid)
                {
                    with_cap(Capability::CAP_SYS_PTRACE, || setns(&caller, t))?
                        .ctx("entering the requesting process's namespaces")?;
                }
            }
            if want_user || parent.is_some() {
                take_effective_ids(uid, gid)?;
            }
            if let Some(parent) = parent {
                setns(&parent, CloneFlags::CLONE_NEWUSER)
                    .ctx("joining the parent subspace's user namespace")?;
                joined = true;
            }
        }
        Requester::Own => map_own_root_if_needed(),
    }
    // Made here when its children are born in the requester's PID
    // namespace; else by a helper born there (`pid_namespace_below`).
    let pid_here = want_pid && (own || children_born_here()?);
    let mut offsets_file = None;
    if want_user {
        let (outer_uid, outer_gid) = (geteuid().as_raw(), getegid().as_raw());
        let mut new = CloneFlags::CLONE_NEWUSER;
        if pid_here {
            new |= CloneFlags::CLONE_NEWPID;
        }
        unshare(new).ctx("creating the user namespace")?;
        offsets_file = match writer {
            Some(writer) => {
                finish_map_writer(writer)?;
                open_offsets_file_at(proc.as_fd()).ok()
            }
            None => {
                let lines = (
                    format!("{uid_in} {outer_uid} 1"),
                    format!("{gid_in} {outer_gid} 1"),
                );
                write_own_maps(proc.as_fd(), lines, own)?
            }
        };
    } else {
        if pid_here {
            unshare(CloneFlags::CLONE_NEWPID).ctx("creating the PID namespace")?;
        }
        if joined {
            // With all capabilities in the parent subspace's user namespace,
            // which owns every time namespace this worker makes.
            offsets_file = open_offsets_file_at(proc.as_fd()).ok();
        } else if !own {
            // Root's subspace in the host's user namespace: CAP_SYS_TIME
            // for the open (the kernel checks the opener). Opened now, as
            // a narrowed subspace worker opens nothing.
            offsets_file = with_cap(Capability::CAP_SYS_TIME, || {
                open_offsets_file_at(proc.as_fd())
            })
            .ok()
            .and_then(Result::ok);
        }
    }
    let me = own_pidfd()?;
    let user = want_user
        .then(|| fd::pidfd_namespace(me.as_fd(), NsType::User, Which::Current))
        .transpose()
        .ctx("opening the new user namespace")?;
    let pidns = match (want_pid, pid_here) {
        (true, true) => Some(new_pid_namespace(me.as_fd())?),
        (true, false) => Some(pid_namespace_below()?),
        _ => None,
    };
    Ok((user, pidns, offsets_file))
}

const NEEDS_6_11: &str = " (needs Linux 6.11 or later)";

fn own_pidfd() -> Result<OwnedFd, Error> {
    fd::pidfd_open(std::process::id() as i32).ctx("opening own pidfd")
}

/// The PID namespace this process's children are born in.
fn new_pid_namespace(me: BorrowedFd<'_>) -> Result<OwnedFd, Error> {
    fd::pidfd_namespace(me, NsType::Pid, Which::ForChildren)
        .ctx(&format!("opening the new PID namespace{NEEDS_6_11}"))
}

/// Whether this process's children are born in its own PID namespace
/// (after `setns(CLONE_NEWPID)` into a requester's that is the same).
fn children_born_here() -> Result<bool, Error> {
    let what = format!("reading own PID namespaces{NEEDS_6_11}");
    let me = fd::pidfd_open(std::process::id() as i32).ctx(&what)?;
    let inode = |which| {
        fd::pidfd_namespace(me.as_fd(), NsType::Pid, which)
            .and_then(|ns| fd::namespace_inode(ns.as_fd()))
            .ctx(&what)
    };
    Ok(inode(Which::Current)? == inode(Which::ForChildren)?)
}

/// A new, empty PID namespace below the one this process's children are
/// born in, made by a short-lived helper born there (the kernel makes one
/// only below a process's active PID namespace).
fn pid_namespace_below() -> Result<OwnedFd, Error> {
    let mine = start_helper("the PID namespace maker", |theirs| {
        let made = unshare(CloneFlags::CLONE_NEWPID)
            .ctx("creating the PID namespace")
            .and_then(|()| new_pid_namespace(own_pidfd()?.as_fd()));
        let sent = match &made {
            Ok(ns) => theirs.send(b"", &[ns.as_fd()]),
            Err(e) => theirs.send(e.to_string().as_bytes(), &[]),
        };
        i32::from(sent.is_err())
    })?;
    let mut buf = [0u8; 256];
    match mine.recv(&mut buf, 1) {
        Ok(Some(got)) if got.fds.len() == 1 => {
            let ns = got.fds.into_iter().next().expect("one fd");
            if fd::namespace_type(ns.as_fd()).ok() == Some(NsType::Pid) {
                Ok(ns)
            } else {
                Err(Error::msg("the PID namespace maker sent something else"))
            }
        }
        Ok(Some(got)) if got.fds.is_empty() && got.len > 0 => Err(Error::msg(
            String::from_utf8_lossy(&buf[..got.len]).into_owned(),
        )),
        _ => Err(Error::msg("the PID namespace maker ended")),
    }
}

fn caps_set(caps: &[Capability]) -> CapsHashSet {
    caps.iter().copied().collect()
}

/// The requester's ids as the *effective* ids only (real and saved uid, and
/// the filesystem uid, stay 0); then `CAP_SYS_ADMIN` effective again, with
/// `CAP_SETFCAP` for a root requester.
fn take_effective_ids(uid: u32, gid: u32) -> Result<(), Error> {
    let (root_u, root_g) = (Uid::from_raw(0), Gid::from_raw(0));
    setgroups(&[]).ctx("dropping supplementary groups")?;
    setresgid(root_g, Gid::from_raw(gid), root_g).ctx("taking the requester's gid")?;
    setresuid(root_u, Uid::from_raw(uid), root_u).ctx("taking the requester's uid")?;
    // Allowed without a capability: 0 is the real uid. Returns the old
    // value; -1 (no valid id) only asks for it.
    setfsuid(root_u);
    if setfsuid(Uid::from_raw(u32::MAX)) != root_u {
        return Err(Error::os("keeping filesystem uid 0", Errno::EPERM));
    }
    let mut need = caps_set(&[Capability::CAP_SYS_ADMIN]);
    if uid == 0 {
        need.insert(Capability::CAP_SETFCAP);
    }
    caps::set(None, CapSet::Effective, &need)
        .map_err(|_| Error::os("raising CAP_SYS_ADMIN", Errno::EPERM))
}

/// Once the maps exist (or in a parent subspace's user namespace): `(uid,
/// gid)` in all ids, and only [`SUBSPACE_CAPS`] (kept across a non-zero uid
/// by `SECBIT_NO_SETUID_FIXUP`, or by ids that do not change).
fn become_inside((uid, gid): (u32, u32)) -> Result<(), Error> {
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
    setresgid(g, g, g).ctx("becoming the requester's gid in the user namespace")?;
    setresuid(u, u, u).ctx("becoming the requester's uid in the user namespace")?;
    privilege::keep_only(&SUBSPACE_CAPS, &SUBSPACE_EFFECTIVE)
}

/// A uid 0 process that stays itself maps uid 0 of its parent namespace,
/// which needs `CAP_SETFCAP` effective at `unshare`: raised if permitted
/// (else the map write reports it).
fn map_own_root_if_needed() {
    let setfcap = Capability::CAP_SETFCAP;
    if geteuid().is_root() && caps::has_cap(None, CapSet::Permitted, setfcap).unwrap_or(false) {
        let _ = caps::raise(None, CapSet::Effective, setfcap);
    }
}

/// Writes `setgroups` `deny` and the two map lines for this process's new
/// user namespace, and opens its time offsets file (if that fails, a
/// request for offsets says why). `dumpable`: a private worker's child,
/// whose `/proc/self` files are its own only while it is dumpable.
fn write_own_maps(
    proc: BorrowedFd<'_>,
    (uid_line, gid_line): (String, String),
    dumpable: bool,
) -> Result<Option<File>, Error> {
    if dumpable {
        prctl::set_dumpable(true).ctx("becoming dumpable")?;
    }
    let result = write_proc(proc, "self/setgroups", "deny")
        .and_then(|()| write_proc(proc, "self/uid_map", &uid_line))
        .and_then(|()| write_proc(proc, "self/gid_map", &gid_line));
    let offsets_file = open_offsets_file_at(proc).ok();
    if dumpable {
        prctl::set_dumpable(false).ctx("becoming non-dumpable")?;
    }
    result.map(|()| offsets_file)
}

/// Writes `content` to `path` under `proc` (this process's own `/proc`).
fn write_proc(proc: BorrowedFd<'_>, path: &str, content: &str) -> Result<(), Error> {
    let fd = openat(
        proc,
        path,
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(&format!("opening /proc/{path}"))?;
    File::from(fd)
        .write_all(content.as_bytes())
        .ctx(&format!("writing /proc/{path}"))
}

/// Starts the map writer: a child, still root on the host, that waits for
/// this process's new user namespace, then writes `maps` (checked by the
/// caller of [`start`]) to its `uid_map` and `gid_map` with `CAP_SYS_ADMIN`,
/// `CAP_SETUID` and `CAP_SETGID`, and answers `+` or `-` and why not.
fn start_map_writer(proc: BorrowedFd<'_>, maps: &IdMaps) -> Result<Channel, Error> {
    let me = std::process::id();
    start_helper("the map writer", |theirs| {
        let mut go = [0u8; 1];
        if !matches!(theirs.recv(&mut go, 0), Ok(Some(got)) if got.len == 1) {
            return 1;
        }
        let need = [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_SETUID,
            Capability::CAP_SETGID,
        ];
        let written = caps::set(None, CapSet::Effective, &caps_set(&need))
            .map_err(|_| Error::msg("raising CAP_SETUID and CAP_SETGID to write the id maps"))
            .and_then(|()| write_proc(proc, &format!("{me}/uid_map"), &IdMaps::text(&maps.uid)))
            .and_then(|()| write_proc(proc, &format!("{me}/gid_map"), &IdMaps::text(&maps.gid)));
        let reply = match written {
            Ok(()) => "+".to_owned(),
            Err(e) => format!("-{e}"),
        };
        i32::from(theirs.send(reply.as_bytes(), &[]).is_err())
    })
}

/// Tells the map writer the new user namespace exists and waits for it.
fn finish_map_writer(writer: Channel) -> Result<(), Error> {
    let lost = || Error::msg("the map writer ended");
    writer.send(b"g", &[]).map_err(|_| lost())?;
    // Never empty: an empty datagram from a peer that has just exited reads
    // as end of stream.
    let mut buf = [0u8; 256];
    match writer.recv(&mut buf, 0) {
        Ok(Some(got)) if got.len == 1 && buf[0] == b'+' => Ok(()),
        Ok(Some(got)) if got.len > 1 && buf[0] == b'-' => Err(Error::msg(
            String::from_utf8_lossy(&buf[1..got.len]).into_owned(),
        )),
        _ => Err(lost()),
    }
}

/// Forks a helper that runs `body` on its end of a new channel and exits
/// with its code; returns this process's end. The helper dies with this
/// process (`PR_SET_PDEATHSIG`; one that died before it was armed shows as
/// a hung-up peer).
fn start_helper(what: &str, body: impl FnOnce(&Channel) -> i32) -> Result<Channel, Error> {
    let (pair, fork) = (
        format!("creating the channel to {what}"),
        format!("starting {what}"),
    );
    let (mine, _, _) = sys::fork_with_channel((&pair, &fork), |theirs| {
        if prctl::set_pdeathsig(Signal::SIGKILL).is_err() || theirs.peer_closed() {
            return 1;
        }
        body(&theirs)
    })?;
    Ok(mine)
}
