//! Subspaces: a new user and/or PID namespace with a worker of its own.
//!
//! The subspace worker is a fork of the current worker (no exec): it
//! inherits the seccomp filter, no_new_privs and the non-dumpable flag, then
//! closes every fd but its channel, points its stdio at `/dev/null`, and
//! sets itself up.
//!
//! Under the broker every subspace worker, at any depth, is started by the
//! *spawner* (a serving worker that only ever starts subspaces), for a
//! requester (uid, gid) and, for a nested subspace, in the user namespace
//! its parent subspace serves in. The child takes the requester's ids as
//! its *effective* ids only and keeps 0 as its real, saved and filesystem
//! uid; it is never dumpable. Its `/proc/self` files then belong to root,
//! which its filesystem uid is, so it writes its own id maps without ever
//! becoming dumpable; the kernel checks the map against the *opener's*
//! effective ids, which are the requester's (`0 <uid> 1`, or `0 0 1` one
//! level down). A nested child first joins the parent's user namespace
//! (`setns`, with `CAP_SYS_ADMIN` from the host), so the new namespace is
//! the parent's child and owned by the requester. See
//! docs/ARCHITECTURE.md, "Subspaces".
//!
//! Started by a private worker (or by a subspace worker below one), the
//! child is already the requester: it writes its own maps and opens its
//! time offsets file, being dumpable for those (a process's `/proc/self`
//! files are its own only then). That worker is the caller's own process,
//! with the caller's privileges only.
//!
//! A PID namespace without a user namespace is made only for root at the
//! first level (a non-root requester could not enter one owned by the
//! host's user namespace). The subspace worker stays outside its new PID
//! namespace, which is handed out empty (by the pidfd ioctl, as `/proc`
//! refuses empty PID namespaces), so the requester's first process in it is
//! its PID 1.
//!
//! The parent never waits for the child: once the child has joined or made
//! a user namespace the requester owns, the requester may signal (stop) it.
//! The parent keeps serving; the setup is finished when `Ready` arrives, or
//! the child is killed at [`SETUP_DEADLINE`].

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::prctl;
use nix::unistd::{getegid, geteuid, setgroups, setresgid, setresuid, Gid, Uid};
use spacer_proto::fd::{self, Which};
use spacer_proto::internal::{SubspaceReady, Trust};
use spacer_proto::{Channel, IdMaps, NsType, Spaces};

use crate::privilege::{self, with_cap, SUBSPACE_CAPS, SUBSPACE_EFFECTIVE};
use crate::sys::{self, Cloned, Ctx, Error};
use crate::Role;

/// How a subspace worker serves once set up ([`crate::serve::serve`]).
pub type Serve = fn(Channel, Role, Option<File>) -> i32;

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

/// Why a setup failed when its worker ended or answered nonsense.
pub const LOST: &str = "the subspace worker ended during setup";

/// How long a new subspace worker has to report `Ready`.
pub const SETUP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Who the new subspace worker is to become.
pub enum Requester {
    /// The spawner, for the broker: the requester's host ids, and the user
    /// namespace to make the subspace in (`None`: the host's).
    Host {
        /// The requester's uid on the host.
        uid: u32,
        /// The requester's gid on the host.
        gid: u32,
        /// The parent subspace's user namespace, for a nested subspace.
        parent: Option<OwnedFd>,
        /// A pidfd of the requesting process: the worker lives in its mount
        /// and UTS namespaces.
        caller: Option<OwnedFd>,
    },
    /// A private worker or a subspace worker below one: it already is the
    /// requester.
    Own,
}

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
}

/// Starts a subspace worker for `requester`.
pub fn start(
    spaces: Spaces,
    requester: Requester,
    maps: Option<IdMaps>,
    serve: Serve,
) -> Result<Starting, Error> {
    let (parent_end, child_end) = Channel::pair().ctx("creating the subspace channel")?;
    match sys::clone_with_pidfd().ctx("starting the subspace worker")? {
        Cloned::Child => {
            drop(parent_end);
            sys::child_exit(|| become_subspace(child_end, spaces, requester, maps, serve))
        }
        Cloned::Parent { pid, pidfd } => {
            drop(child_end);
            Ok(Starting {
                channel: parent_end,
                pidfd,
                pid,
                deadline: std::time::Instant::now() + SETUP_DEADLINE,
            })
        }
    }
}

impl Starting {
    /// The new worker's `Ready` (or failure) can be read: take it. Does not
    /// block beyond reading that one datagram.
    pub fn finish(self) -> Result<Spawned, Error> {
        match read_ready(&self.channel) {
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
        privilege::kill(self.pidfd.as_fd());
    }
}

type NsFds = (Option<OwnedFd>, Option<OwnedFd>);

/// The parent's side of the setup, once `Ready` is readable. The new
/// worker runs as the requester: its fds are checked by kind.
fn read_ready(chan: &Channel) -> Result<NsFds, Error> {
    match chan.recv_msg::<SubspaceReady>(Trust::Kinds) {
        Ok(Some((SubspaceReady::Ready { user, pid }, fds))) => {
            let mut fds = fds.into_iter();
            let user = if user { fds.next() } else { None };
            let pidns = if pid { fds.next() } else { None };
            Ok((user, pidns))
        }
        Ok(Some((SubspaceReady::Failed { reason }, _))) => Err(Error::msg(reason)),
        _ => Err(Error::msg(LOST)),
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
    // Nothing of the parent's but the channel (and the parent user
    // namespace to join): no broker channel, no homes, and not the
    // service's stderr: this process will run as the requester.
    let mut keep = vec![channel.as_raw_fd()];
    if let Requester::Host { parent, caller, .. } = &requester {
        keep.extend(parent.iter().chain(caller.iter()).map(|f| f.as_raw_fd()));
    }
    // SAFETY: a fresh child that never returns to the frames owning the
    // other fds.
    #[allow(unsafe_code)]
    let closed = unsafe { sys::close_fds_except(&keep) };
    if closed.is_err() || sys::stdio_to_dev_null().is_err() {
        return 1;
    }
    // Told apart from the service's own workers in `ps`.
    let _ = prctl::set_name(c"spacer-subspace");
    let (role, inside) = match &requester {
        Requester::Host { parent, .. } => (
            Role::HostSubspace,
            spaces.contains(Spaces::USER) || parent.is_some(),
        ),
        Requester::Own => (Role::Subspace, spaces.contains(Spaces::USER)),
    };
    // The ids the worker has inside: the requester's, as the maps name them.
    let me_inside = maps
        .as_ref()
        .map_or((0, 0), |m| (m.uid[0].inside, m.gid[0].inside));
    match setup(spaces, requester, maps) {
        Ok((user, pidns, offsets_file)) => {
            let ready = SubspaceReady::Ready {
                user: user.is_some(),
                pid: pidns.is_some(),
            };
            let fds: Vec<BorrowedFd<'_>> =
                user.iter().chain(pidns.iter()).map(|f| f.as_fd()).collect();
            if channel.send_msg(&ready, &fds).is_err() {
                return 1;
            }
            drop((user, pidns));
            if inside {
                if let Err(e) = become_inside(me_inside) {
                    eprintln!("spacer-worker: {e}");
                    return 1;
                }
            }
            if let Err(e) = crate::seccomp::narrow(role) {
                eprintln!("spacer-worker: installing the {role:?} filter: {e}");
                return 1;
            }
            serve(channel, role, offsets_file)
        }
        Err(e) => {
            let reason = e.to_string();
            let _ = channel.send_msg(&SubspaceReady::Failed { reason }, &[]);
            1
        }
    }
}

/// The new user and PID namespaces, and the time offsets file.
type SetupResult = Result<(Option<OwnedFd>, Option<OwnedFd>, Option<File>), Error>;

fn setup(spaces: Spaces, requester: Requester, maps: Option<IdMaps>) -> SetupResult {
    let pid_flag = if spaces.contains(Spaces::PID) {
        CloneFlags::CLONE_NEWPID
    } else {
        CloneFlags::empty()
    };
    let own = matches!(requester, Requester::Own);
    let mut joined = false;
    // The worker's own /proc, opened before it may join the requester's
    // mount namespace, where the requester may decide what paths mean: the
    // id maps and the offsets file are opened through it.
    let proc = nix::fcntl::open(
        "/proc",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx("opening /proc")?;
    // Subordinate ids are written by a process in the parent user namespace
    // with CAP_SETUID and CAP_SETGID there: a child of this one, started
    // while it is still root on the host and in the host's PID namespace.
    let writer = match &maps {
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
                // namespaces, which the rooms this worker makes will copy,
                // and for a new PID namespace the requester's PID namespace
                // for this process's children (see `pid_namespace_below`).
                let mut types = vec![CloneFlags::CLONE_NEWNS, CloneFlags::CLONE_NEWUTS];
                if spaces.contains(Spaces::PID) {
                    types.push(CloneFlags::CLONE_NEWPID);
                }
                for t in types {
                    with_cap(caps::Capability::CAP_SYS_PTRACE, || setns(&caller, t))?
                        .ctx("entering the requesting process's namespaces")?;
                }
            }
            if spaces.contains(Spaces::USER) || parent.is_some() {
                take_effective_ids(uid, gid)?;
            }
            if let Some(parent) = parent {
                // Full capabilities in the parent subspace's user namespace
                // from here on (and none on the host).
                setns(&parent, CloneFlags::CLONE_NEWUSER)
                    .ctx("joining the parent subspace's user namespace")?;
                joined = true;
            }
        }
        Requester::Own => map_own_root_if_needed(),
    }
    // A private worker's requester is its own caller, whose PID namespace
    // is this process's, and so is that of a requester in the host's PID
    // namespace: then this process makes the PID namespace itself. For a
    // requester in another PID namespace, a short-lived child born there
    // does (`pid_namespace_below`; a fork more).
    let pid_here = own || !pid_flag.is_empty() && children_born_here()?;
    let pid_flag = if pid_here {
        pid_flag
    } else {
        CloneFlags::empty()
    };
    let mut offsets_file = None;
    if spaces.contains(Spaces::USER) {
        let (outer_uid, outer_gid) = (geteuid().as_raw(), getegid().as_raw());
        unshare(CloneFlags::CLONE_NEWUSER | pid_flag).ctx("creating the user namespace")?;
        offsets_file = match (writer, &maps) {
            (Some(writer), _) => {
                finish_map_writer(writer)?;
                crate::prepare::open_offsets_file_at(proc.as_fd()).ok()
            }
            (None, Some(m)) => {
                let (u, g) = (m.uid[0], m.gid[0]);
                let lines = (
                    format!("{} {outer_uid} 1", u.inside),
                    format!("{} {outer_gid} 1", g.inside),
                );
                write_own_maps(proc.as_fd(), lines, own)?
            }
            (None, None) => {
                let lines = (format!("0 {outer_uid} 1"), format!("0 {outer_gid} 1"));
                write_own_maps(proc.as_fd(), lines, own)?
            }
        };
    } else {
        if !pid_flag.is_empty() {
            unshare(pid_flag).ctx("creating the PID namespace")?;
        }
        if joined {
            // Opened with all capabilities in the parent subspace's user
            // namespace, which owns every time namespace this worker makes.
            offsets_file = crate::prepare::open_offsets_file_at(proc.as_fd()).ok();
        }
    }
    let me = fd::pidfd_open(std::process::id() as i32).ctx("opening own pidfd")?;
    let user = if spaces.contains(Spaces::USER) {
        Some(
            fd::pidfd_namespace(me.as_fd(), NsType::User, Which::Current)
                .ctx("opening the new user namespace")?,
        )
    } else {
        None
    };
    let pidns = if !spaces.contains(Spaces::PID) {
        None
    } else if pid_here {
        Some(
            fd::pidfd_namespace(me.as_fd(), NsType::Pid, Which::ForChildren)
                .ctx(&format!("opening the new PID namespace{NEEDS_6_11}"))?,
        )
    } else {
        Some(pid_namespace_below()?)
    };
    Ok((user, pidns, offsets_file))
}

const NEEDS_6_11: &str = " (needs Linux 6.11 or later)";

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

/// A new, empty PID namespace, child of the one this process's children are
/// born in (the requester's, after `setns`) and owned by this process's
/// user namespace. The kernel makes a PID namespace only below a process's
/// *active* one, so a child born there makes it and sends it back, then
/// ends: that child is the only process of the service the requester's PID
/// namespace ever sees, for a moment. The serving worker stays where it is,
/// so the requester's first process in the new namespace is its PID 1.
///
/// The child may be stopped by the requester (it is in a user namespace the
/// requester owns): it dies with this process (`PR_SET_PDEATHSIG`), which
/// the spawner kills at the setup deadline.
fn pid_namespace_below() -> Result<OwnedFd, Error> {
    let mine = start_helper("the PID namespace maker", |theirs| {
        let made = unshare(CloneFlags::CLONE_NEWPID)
            .ctx("creating the PID namespace")
            .and_then(|()| {
                let me = fd::pidfd_open(std::process::id() as i32).ctx("opening own pidfd")?;
                fd::pidfd_namespace(me.as_fd(), NsType::Pid, Which::ForChildren)
                    .ctx(&format!("opening the new PID namespace{NEEDS_6_11}"))
            });
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

/// Takes the requester's ids as the *effective* ids only: real and saved
/// uid stay 0, so the requester can neither signal nor trace this process
/// before it is in a user namespace the requester owns, and the filesystem
/// uid is set back to 0, so that the process can open its own `/proc/self`
/// files (owned by root: it is never dumpable). The new user namespace is
/// owned by the effective uid. The switch cleared the effective set; only
/// `CAP_SYS_ADMIN` is raised again (for `unshare`, which hosts that forbid
/// unprivileged user namespaces still allow with it, and for `setns` into a
/// parent subspace's user namespace), with `CAP_SETFCAP` for a root
/// requester (mapping uid 0 of the host needs it at `unshare`).
fn take_effective_ids(uid: u32, gid: u32) -> Result<(), Error> {
    use caps::{CapSet, Capability};
    setgroups(&[]).ctx("dropping supplementary groups")?;
    setresgid(Gid::from_raw(0), Gid::from_raw(gid), Gid::from_raw(0))
        .ctx("taking the requester's gid")?;
    setresuid(Uid::from_raw(0), Uid::from_raw(uid), Uid::from_raw(0))
        .ctx("taking the requester's uid")?;
    // Allowed without a capability: 0 is the real uid. Returns the old value;
    // -1 (no valid id) only asks for it.
    nix::unistd::setfsuid(Uid::from_raw(0));
    if nix::unistd::setfsuid(Uid::from_raw(u32::MAX)) != Uid::from_raw(0) {
        return Err(Error::os("keeping filesystem uid 0", Errno::EPERM));
    }
    let mut need: caps::CapsHashSet = [Capability::CAP_SYS_ADMIN].into_iter().collect();
    if uid == 0 {
        need.insert(Capability::CAP_SETFCAP);
    }
    caps::set(None, CapSet::Effective, &need)
        .map_err(|_| Error::os("raising CAP_SYS_ADMIN", Errno::EPERM))
}

/// Once the maps exist (or in a parent subspace's user namespace): the
/// requester's uid and gid in the current user namespace (all ids, the
/// filesystem ones too; 0 unless the maps keep the requester's own ids),
/// and only [`SUBSPACE_CAPS`]. Capabilities in the
/// namespace survive a non-zero uid: `SECBIT_NO_SETUID_FIXUP` (the
/// spawner's, inherited) or ids that do not change (a private worker's).
fn become_inside((uid, gid): (u32, u32)) -> Result<(), Error> {
    setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))
        .ctx("becoming the requester's gid in the user namespace")?;
    setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
        .ctx("becoming the requester's uid in the user namespace")?;
    privilege::keep_only(&SUBSPACE_CAPS, &SUBSPACE_EFFECTIVE)
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
/// process's new user namespace, `uid`/`gid` being its effective ids in the
/// parent namespace, and opens its time offsets file (returned; with every
/// capability in the new namespace, which owns every time namespace this
/// worker will make; if it fails, a request for offsets says why).
///
/// A process started by the spawner is never dumpable: its filesystem uid
/// is root's, who owns its `/proc/self` files. A private worker's child
/// (`dumpable`) is the caller's own process: its `/proc/self` files are its
/// own only while it is dumpable, so it is for these writes, while it holds
/// no capability outside the new namespace.
fn write_own_maps(
    proc: BorrowedFd<'_>,
    (uid_line, gid_line): (String, String),
    dumpable: bool,
) -> Result<Option<File>, Error> {
    if dumpable {
        prctl::set_dumpable(true).ctx("becoming dumpable")?;
    }
    let result = (|| {
        write_proc(proc, "self/setgroups", "deny")?;
        write_proc(proc, "self/uid_map", &uid_line)?;
        write_proc(proc, "self/gid_map", &gid_line)
    })();
    let offsets_file = crate::prepare::open_offsets_file_at(proc).ok();
    if dumpable {
        prctl::set_dumpable(false).ctx("becoming non-dumpable")?;
    }
    result.map(|()| offsets_file)
}

/// Writes `content` to `path` under `proc` (this process's own `/proc`).
fn write_proc(proc: BorrowedFd<'_>, path: &str, content: &str) -> Result<(), Error> {
    let fd = nix::fcntl::openat(
        proc,
        path,
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(&format!("opening /proc/{path}"))?;
    std::fs::File::from(fd)
        .write_all(content.as_bytes())
        .ctx(&format!("writing /proc/{path}"))
}

/// Starts the map writer: a child, still root on the host, that waits for
/// this process's new user namespace and then writes `maps` (checked by the
/// caller of [`start`]) to this process's `uid_map` and `gid_map`, as
/// `newuidmap`/`newgidmap` would, with `CAP_SYS_ADMIN`, `CAP_SETUID` and
/// `CAP_SETGID` (the kernel wants them of the opener and of the writer in
/// the parent namespace). It leaves `setgroups` as it is (`allow`), as
/// `newgidmap` does for a map with subordinate gids. It dies with this
/// process (`PR_SET_PDEATHSIG`), so the pid it writes to is always ours.
fn start_map_writer(proc: BorrowedFd<'_>, maps: &IdMaps) -> Result<Channel, Error> {
    let me = std::process::id();
    start_helper("the map writer", |theirs| {
        let mut go = [0u8; 1];
        if !matches!(theirs.recv(&mut go, 0), Ok(Some(got)) if got.len == 1) {
            return 1;
        }
        let reply = match write_maps_of(proc, me, maps) {
            Ok(()) => "+".to_owned(),
            Err(e) => format!("-{e}"),
        };
        i32::from(theirs.send(reply.as_bytes(), &[]).is_err())
    })
}

/// Forks a helper that runs `body` on its end of a new channel and exits
/// with its code; returns this process's end. The helper dies with this
/// process (`PR_SET_PDEATHSIG`): this end is closed in it, so a parent that
/// died before the death signal was armed shows as a hung-up peer.
fn start_helper(what: &str, body: impl FnOnce(&Channel) -> i32) -> Result<Channel, Error> {
    let (mine, theirs) = Channel::pair().ctx(&format!("creating the channel to {what}"))?;
    match sys::clone_with_pidfd().ctx(&format!("starting {what}"))? {
        Cloned::Child => {
            drop(mine);
            sys::child_exit(|| {
                if prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err()
                    || theirs.peer_closed()
                {
                    return 1;
                }
                body(&theirs)
            })
        }
        Cloned::Parent { .. } => Ok(mine),
    }
}

/// Tells the map writer the new user namespace exists and waits for it.
fn finish_map_writer(writer: Channel) -> Result<(), Error> {
    let lost = || Error::msg("the map writer ended");
    writer.send(b"g", &[]).map_err(|_| lost())?;
    // `+`, or `-` and why not (never empty: an empty datagram from a peer
    // that has just exited reads as end of stream).
    let mut buf = [0u8; 256];
    match writer.recv(&mut buf, 0) {
        Ok(Some(got)) if got.len == 1 && buf[0] == b'+' => Ok(()),
        Ok(Some(got)) if got.len > 1 && buf[0] == b'-' => Err(Error::msg(
            String::from_utf8_lossy(&buf[1..got.len]).into_owned(),
        )),
        _ => Err(lost()),
    }
}

fn write_maps_of(proc: BorrowedFd<'_>, pid: u32, maps: &IdMaps) -> Result<(), Error> {
    use caps::{CapSet, Capability};
    let need: caps::CapsHashSet = [
        Capability::CAP_SYS_ADMIN,
        Capability::CAP_SETUID,
        Capability::CAP_SETGID,
    ]
    .into_iter()
    .collect();
    caps::set(None, CapSet::Effective, &need)
        .map_err(|_| Error::msg("raising CAP_SETUID and CAP_SETGID to write the id maps"))?;
    write_proc(proc, &format!("{pid}/uid_map"), &IdMaps::text(&maps.uid))?;
    write_proc(proc, &format!("{pid}/gid_map"), &IdMaps::text(&maps.gid))
}
