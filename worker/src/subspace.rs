//! Subspaces: a new user and/or PID namespace with a worker of its own, a
//! fork of the current worker. Who does what, in which order and why:
//! docs/ARCHITECTURE.md, "Subspaces".

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use caps::{CapSet, Capability};
use nix::errno::Errno;
use nix::fcntl::{open, openat, OFlag};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::{prctl, signal::Signal, stat::Mode};
use nix::unistd::{getegid, geteuid, setfsuid, setgroups, setresgid, setresuid, Gid, Uid};
use spacer_core::fd::{self, Which};
use spacer_core::internal::{SubspaceReady, Trust};
use spacer_core::{Channel, IdMaps, NsType, Spaces};

use crate::maker::open_offsets_file_at;
use crate::privilege::{self, with_cap, SUBSPACE_CAPS, SUBSPACE_EFFECTIVE};
use crate::sys::{self, Ctx, Error};
use crate::Part;

/// How a subspace worker serves once set up, as its part.
pub type Serve<P> = fn(Channel, P, Option<File>) -> i32;

/// Why a setup failed when its worker ended or answered nonsense.
pub const LOST: &str = "the subspace worker ended during setup";

/// How long a new subspace worker has to report `Ready`.
pub const SETUP_DEADLINE: Duration = Duration::from_secs(2);

/// Who the new subspace worker is to become.
pub enum Requester {
    /// For the spawner: the requester's host ids, the parent subspace's
    /// user namespace (nested), the requesting process's pidfd.
    Host {
        /// The requester's host uid.
        uid: u32,
        /// The requester's host gid.
        gid: u32,
        /// The parent subspace's user namespace (nested).
        parent: Option<OwnedFd>,
        /// The requesting process's pidfd.
        caller: Option<OwnedFd>,
    },
    /// A private worker or a subspace worker below one: already the
    /// requester (no daemon [`Role`](crate::Role) says so; its setup's
    /// steps are refused by their filters).
    Own,
}

/// A started subspace worker, not yet ready. Its parent never blocks on
/// it: the requester may stop it.
pub struct Starting {
    /// The parent's end of the new worker's channel.
    pub channel: Channel,
    pub pidfd: OwnedFd,
    pub pid: i32,
    pub deadline: Instant,
}

/// The new user and PID namespaces.
pub type NsFds = (Option<OwnedFd>, Option<OwnedFd>);

/// Starts a subspace worker for `requester`, to serve as `part`.
pub fn start<P: Part>(
    spaces: Spaces,
    requester: Requester,
    maps: Option<IdMaps>,
    part: P,
    serve: Serve<P>,
) -> Result<Starting, Error> {
    let ctx = (
        "creating the subspace channel",
        "starting the subspace worker",
    );
    let (channel, pid, pidfd) = sys::fork_with_channel(ctx, |child_end| {
        become_subspace(child_end, spaces, requester, maps, (part, serve))
    })?;
    Ok(Starting {
        channel,
        pidfd,
        pid,
        deadline: Instant::now() + SETUP_DEADLINE,
    })
}

impl Starting {
    /// Reads the `Ready` (or failure) that has arrived; the new worker runs
    /// as the requester, so its fds are checked by kind.
    pub fn ready(&self) -> Result<NsFds, Error> {
        let mut buf = vec![0u8; spacer_core::internal::MAX_BYTES];
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
fn become_subspace<P: Part>(
    channel: Channel,
    spaces: Spaces,
    requester: Requester,
    maps: Option<IdMaps>,
    (role, serve): (P, Serve<P>),
) -> i32 {
    // Nothing of the parent's but the channel and the request's fds; stdio
    // not the service's (it will run as the requester).
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
    let inside = match &requester {
        Requester::Host { parent, .. } => spaces.contains(Spaces::USER) || parent.is_some(),
        Requester::Own => spaces.contains(Spaces::USER),
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

/// Makes a subspace's namespaces; `(uid_in, gid_in)`: the worker's ids
/// inside.
fn setup(
    spaces: Spaces,
    requester: Requester,
    maps: Option<&IdMaps>,
    (uid_in, gid_in): (u32, u32),
) -> Result<Made, Error> {
    let own = matches!(requester, Requester::Own);
    let (want_user, want_pid) = (spaces.contains(Spaces::USER), spaces.contains(Spaces::PID));
    // Opened before it may join the requester's mount namespace (where the
    // requester decides what paths mean): every later /proc file is opened
    // through it.
    let proc = open("/proc", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty());
    let proc = proc.ctx("opening /proc")?;
    // Subordinate ids: written by a child that stays root on the host.
    let writer = match maps {
        Some(m) if m.has_subordinate_ids() => Some(start_map_writer(proc.as_fd(), m)?),
        _ => None,
    };
    let me = fd::pidfd_open(std::process::id() as i32).ctx("opening own pidfd")?;
    if let Requester::Host {
        uid,
        gid,
        parent,
        caller,
    } = requester
    {
        if let Some(caller) = caller {
            // The requester's mount and UTS namespaces, and its PID
            // namespace for this one's children.
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
        }
    } else {
        map_own_root_if_needed();
    }
    // Made here when its children are born in the requester's PID
    // namespace, else by a helper born there.
    let pid_here = want_pid && (own || children_born_here(me.as_fd())?);
    let mut offsets_file = None;
    if want_user {
        let (outer_uid, outer_gid) = (geteuid().as_raw(), getegid().as_raw());
        let pid = if pid_here {
            CloneFlags::CLONE_NEWPID
        } else {
            CloneFlags::empty()
        };
        unshare(CloneFlags::CLONE_NEWUSER | pid).ctx("creating the user namespace")?;
        match writer {
            Some(writer) => finish_map_writer(writer)?,
            None => {
                let lines = [
                    format!("{uid_in} {outer_uid} 1"),
                    format!("{gid_in} {outer_gid} 1"),
                ];
                offsets_file = write_own_maps(proc.as_fd(), lines, own)?;
            }
        }
    } else if pid_here {
        unshare(CloneFlags::CLONE_NEWPID).ctx("creating the PID namespace")?;
    }
    if !own {
        // Now, as a narrowed subspace worker opens nothing. CAP_SYS_TIME
        // counts for root's PID-only subspace (the kernel checks the
        // opener); elsewhere it has every capability already.
        let open = || open_offsets_file_at(proc.as_fd());
        offsets_file = with_cap(Capability::CAP_SYS_TIME, open)
            .ok()
            .and_then(Result::ok);
    }
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

/// The PID namespace this process's children are born in.
fn new_pid_namespace(me: BorrowedFd<'_>) -> Result<OwnedFd, Error> {
    fd::pidfd_namespace(me, NsType::Pid, Which::ForChildren)
        .ctx(&format!("opening the new PID namespace{NEEDS_6_11}"))
}

/// Whether this process's children are born in its own PID namespace
/// (after `setns(CLONE_NEWPID)` into a requester's that is the same).
fn children_born_here(me: BorrowedFd<'_>) -> Result<bool, Error> {
    let inode = |which| {
        fd::pidfd_namespace(me, NsType::Pid, which)
            .and_then(|ns| fd::namespace_inode(ns.as_fd()))
            .ctx(&format!("reading own PID namespaces{NEEDS_6_11}"))
    };
    Ok(inode(Which::Current)? == inode(Which::ForChildren)?)
}

/// A new, empty PID namespace below the one this process's children are
/// born in, made by a helper born there (the kernel makes one only below
/// a process's active PID namespace).
fn pid_namespace_below() -> Result<OwnedFd, Error> {
    let what = "the PID namespace maker";
    let mine = start_helper(what, |theirs| {
        let made = unshare(CloneFlags::CLONE_NEWPID).ctx("creating the PID namespace");
        let me = made.and_then(|()| fd::pidfd_open(std::process::id() as i32).ctx("own pidfd"));
        let ns = me.and_then(|me| new_pid_namespace(me.as_fd()));
        answer(theirs, ns.as_ref().map(|ns| Some(ns.as_fd())))
    })?;
    let ns = answered(&mine, what, 1)?.pop();
    ns.filter(|ns| fd::namespace_type(ns.as_fd()).ok() == Some(NsType::Pid))
        .ok_or_else(|| Error::msg(format!("{what} sent something else")))
}

/// The requester's ids as the *effective* ids only (real, saved and
/// filesystem uid stay 0); then `CAP_SYS_ADMIN` effective again, with
/// `CAP_SETFCAP` for a root requester.
fn take_effective_ids(uid: u32, gid: u32) -> Result<(), Error> {
    let (root_u, root_g) = (Uid::from_raw(0), Gid::from_raw(0));
    setgroups(&[]).ctx("dropping supplementary groups")?;
    setresgid(root_g, Gid::from_raw(gid), root_g).ctx("taking the requester's gid")?;
    setresuid(root_u, Uid::from_raw(uid), root_u).ctx("taking the requester's uid")?;
    // Allowed: 0 is the real uid. -1 (no valid id) only reads it back.
    setfsuid(root_u);
    if setfsuid(Uid::from_raw(u32::MAX)) != root_u {
        return Err(Error::os("keeping filesystem uid 0", Errno::EPERM));
    }
    let mut need = vec![Capability::CAP_SYS_ADMIN];
    if uid == 0 {
        need.push(Capability::CAP_SETFCAP);
    }
    caps::set(None, CapSet::Effective, &need.into_iter().collect())
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
/// (else the map write says why).
fn map_own_root_if_needed() {
    let setfcap = Capability::CAP_SETFCAP;
    if geteuid().is_root() && caps::has_cap(None, CapSet::Permitted, setfcap).unwrap_or(false) {
        let _ = caps::raise(None, CapSet::Effective, setfcap);
    }
}

/// Writes `setgroups` `deny` and the two map lines for this process's new
/// user namespace. `own`: a private worker's child, whose `/proc/self`
/// files are its own only while it is dumpable; it also opens its time
/// offsets file then.
fn write_own_maps(
    proc: BorrowedFd<'_>,
    [uid_line, gid_line]: [String; 2],
    own: bool,
) -> Result<Option<File>, Error> {
    if own {
        prctl::set_dumpable(true).ctx("becoming dumpable")?;
    }
    let written = write_proc(proc, "self/setgroups", "deny")
        .and_then(|()| write_proc(proc, "self/uid_map", &uid_line))
        .and_then(|()| write_proc(proc, "self/gid_map", &gid_line));
    let offsets_file = own.then(|| open_offsets_file_at(proc).ok()).flatten();
    if own {
        prctl::set_dumpable(false).ctx("becoming non-dumpable")?;
    }
    written.map(|()| offsets_file)
}

/// Writes `content` to `path` under `proc` (this process's own `/proc`).
fn write_proc(proc: BorrowedFd<'_>, path: &str, content: &str) -> Result<(), Error> {
    let fd = openat(
        proc,
        path,
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    );
    let fd = fd.ctx(&format!("opening /proc/{path}"))?;
    File::from(fd)
        .write_all(content.as_bytes())
        .ctx(&format!("writing /proc/{path}"))
}

/// Starts the map writer: a child, still root on the host, that waits for
/// this process's new user namespace, then writes `maps` (checked by the
/// caller of [`start`]) to its `uid_map` and `gid_map` with `CAP_SYS_ADMIN`,
/// `CAP_SETUID` and `CAP_SETGID`.
fn start_map_writer(proc: BorrowedFd<'_>, maps: &IdMaps) -> Result<Channel, Error> {
    let me = std::process::id();
    start_helper("the map writer", |theirs| {
        if !matches!(theirs.recv(&mut [0u8; 1], 0), Ok(Some(got)) if got.len == 1) {
            return 1;
        }
        let need = [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_SETUID,
            Capability::CAP_SETGID,
        ];
        let written = caps::set(None, CapSet::Effective, &need.into_iter().collect())
            .map_err(|_| Error::msg("raising CAP_SETUID and CAP_SETGID to write the id maps"))
            .and_then(|()| write_proc(proc, &format!("{me}/uid_map"), &IdMaps::text(&maps.uid)))
            .and_then(|()| write_proc(proc, &format!("{me}/gid_map"), &IdMaps::text(&maps.gid)));
        answer(theirs, written.as_ref().map(|_| None))
    })
}

/// Tells the map writer the new user namespace exists and waits for it.
fn finish_map_writer(writer: Channel) -> Result<(), Error> {
    let what = "the map writer";
    writer
        .send(b"g", &[])
        .map_err(|_| Error::msg(format!("{what} ended")))?;
    answered(&writer, what, 0).map(drop)
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

/// A helper's answer: `+` with at most one fd, or `-` and why not (never
/// empty: an empty datagram from a peer that has just exited reads as end
/// of stream). Returns the helper's exit code.
fn answer(theirs: &Channel, result: Result<Option<BorrowedFd<'_>>, &Error>) -> i32 {
    let sent = match result {
        Ok(fd) => theirs.send(b"+", fd.as_slice()),
        Err(e) => theirs.send(format!("-{e}").as_bytes(), &[]),
    };
    i32::from(sent.is_err())
}

/// Reads a helper's [`answer`], with up to `max_fds` fds.
fn answered(mine: &Channel, what: &str, max_fds: usize) -> Result<Vec<OwnedFd>, Error> {
    let mut buf = [0u8; 256];
    match mine.recv(&mut buf, max_fds) {
        Ok(Some(got)) if got.len == 1 && buf[0] == b'+' => Ok(got.fds),
        Ok(Some(got)) if got.len > 1 && buf[0] == b'-' && got.fds.is_empty() => Err(Error::msg(
            String::from_utf8_lossy(&buf[1..got.len]).into_owned(),
        )),
        _ => Err(Error::msg(format!("{what} ended"))),
    }
}
