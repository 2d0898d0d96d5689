//! Privileges: the start-up drop, the capability sets each worker keeps,
//! and the only places a capability is raised or an id taken for a while.
//! Why each capability: README.md, "Privileges". What cannot be undone
//! taints the process ([`tainted`]; docs/ARCHITECTURE.md, "Processes and
//! trust").

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use caps::{CapSet, Capability, CapsHashSet};
use nix::sys::prctl;
use nix::unistd::{getppid, setfsuid, setgroups, setresuid, Uid};
use spacer_core::Channel;

use crate::sys::{self, Ctx, Error};
use crate::{seccomp, Part};

use Capability::*;

/// Every capability the worker may hold (bounding and permitted sets).
pub const WORKER_CAPS: [Capability; 9] = [
    CAP_KILL,
    CAP_SYS_PTRACE,
    CAP_SYS_ADMIN,
    CAP_SYS_CHROOT,
    CAP_SETUID,
    CAP_SETGID,
    CAP_SETFCAP,
    CAP_NET_ADMIN,
    CAP_SYS_TIME,
];

/// The worker's effective set; the others are raised by [`with_cap`].
pub const WORKER_EFFECTIVE: [Capability; 4] =
    [CAP_SYS_ADMIN, CAP_SYS_CHROOT, CAP_SETUID, CAP_SETGID];

/// What a subspace worker keeps, inside its own user namespace.
pub const SUBSPACE_CAPS: [Capability; 5] = [
    CAP_SYS_ADMIN,
    CAP_SYS_CHROOT,
    CAP_SETFCAP,
    CAP_NET_ADMIN,
    CAP_SYS_TIME,
];

/// A subspace worker's effective set.
pub const SUBSPACE_EFFECTIVE: [Capability; 3] = [CAP_SYS_ADMIN, CAP_SYS_CHROOT, CAP_SETFCAP];

/// Checks that the other end of `channel` was made by our parent (a shell
/// starting the worker by hand cannot pass that).
pub fn check_channel(channel: &Channel) -> Result<(), Error> {
    let cred = channel
        .peer_credentials()
        .ctx("reading the channel's peer")?;
    let parent = getppid().as_raw();
    if cred.pid != parent || parent <= 1 {
        return Err(Error::msg(
            "the channel's other end does not belong to the process that started the worker",
        ));
    }
    Ok(())
}

/// The ordered drop, for a worker started by the broker as root
/// ([`Part::DAEMON`]) or by a client library with the caller's privileges
/// (private mode: it keeps what it has of [`WORKER_CAPS`]), as the part
/// `first` it takes. Each step: docs/ARCHITECTURE.md.
pub fn confine<P: Part>(channel: &Channel, mode: seccomp::Mode, first: P) -> Result<(), Error> {
    let daemon = P::DAEMON;
    // 1. Die with the parent (not a private worker: its parent is a thread).
    if daemon {
        prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).ctx("setting pdeathsig")?;
    }
    check_channel(channel)?;
    // 2. No fd but stdio and the channel.
    // SAFETY: nothing in this process owns another fd yet.
    #[allow(unsafe_code)]
    let closed = unsafe { sys::close_fds_except(&[channel.as_raw_fd()]) };
    closed.ctx("closing inherited fds")?;
    nix::unistd::chdir("/").ctx("changing to /")?;
    // 3. No supplementary groups (a private worker's are its caller's).
    if nix::unistd::geteuid().is_root() {
        setgroups(&[]).ctx("dropping supplementary groups")?;
    }
    // 4. Capabilities kept across as_requester's uid changes (needs
    //    CAP_SETPCAP, which goes next).
    if daemon {
        sys::keep_caps_across_uid_changes().ctx("keeping capabilities across uid changes")?;
    }
    // 5. Bounding, ambient, inheritable, effective, permitted.
    keep_only(&WORKER_CAPS, &WORKER_EFFECTIVE)?;
    // 6. A network namespace of its own: CAP_NET_ADMIN cannot reach the host's.
    if daemon {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .ctx("moving to a network namespace of its own")?;
    }
    // 7. No privilege gain through exec, no ptrace, no core dump.
    prctl::set_no_new_privs().ctx("setting no_new_privs")?;
    prctl::set_dumpable(false).ctx("making the worker non-dumpable")?;
    // 8. Children reaped by the kernel; orphaned descendants come here.
    sys::autoreap_children().ctx("ignoring SIGCHLD")?;
    prctl::set_child_subreaper(true).ctx("becoming a child subreaper")?;
    // 9. Last: the syscall allow-list.
    seccomp::install(mode, first).map_err(|e| Error::msg(format!("installing seccomp: {e}")))
}

static TAINTED: AtomicBool = AtomicBool::new(false);

/// Whether this process holds a capability or id it could not give back.
pub fn tainted() -> bool {
    TAINTED.load(Ordering::Relaxed)
}

pub fn taint(what: &str) {
    eprintln!("spacer-worker: {what}; serving nothing more");
    TAINTED.store(true, Ordering::Relaxed);
}

/// Reduces every capability set to `keep` (what the process has of it):
/// bounding (where CAP_SETPCAP allows), ambient, inheritable, then
/// effective (to `effective`) and permitted.
pub fn keep_only(keep: &[Capability], effective: &[Capability]) -> Result<(), Error> {
    let err = |what: &'static str| move |e| Error::msg(format!("{what}: {e}"));
    let permitted = caps::read(None, CapSet::Permitted).map_err(err("reading capabilities"))?;
    let keep: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    if permitted.contains(&CAP_SETPCAP) {
        for cap in caps::all().into_iter().filter(|c| !keep.contains(c)) {
            if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap).map_err(err("dropping from bounding"))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err("clearing ambient capabilities"))?;
    caps::clear(None, CapSet::Inheritable).map_err(err("clearing inheritable capabilities"))?;
    let effective: CapsHashSet = effective
        .iter()
        .copied()
        .filter(|c| keep.contains(c))
        .collect();
    caps::set(None, CapSet::Effective, &effective).map_err(err("setting effective"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(err("setting permitted capabilities"))
}

/// Runs `f` with `cap` effective (raised from the permitted set unless it
/// is effective already), and lowers it again after.
pub fn with_cap<T>(cap: Capability, f: impl FnOnce() -> T) -> Result<T, Error> {
    let was = caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    if !was && caps::raise(None, CapSet::Effective, cap).is_err() {
        return Err(Error::msg(format!(
            "the worker does not hold {cap} (it was not in the service's capability \
             bounding set, or the caller of a private worker lacks it)"
        )));
    }
    let out = f();
    if !was && caps::drop(None, CapSet::Effective, cap).is_err() {
        taint(&format!("cannot lower {cap}"));
    }
    Ok(out)
}

/// Runs `f` with `uid` (if any) as the effective uid, filesystem uid 0 and
/// the capabilities kept: the kernel charges what it makes to `uid`.
pub fn as_requester<T>(uid: Option<u32>, f: impl FnOnce() -> T) -> Result<T, Error> {
    let Some(uid) = uid else { return Ok(f()) };
    let keep = Uid::from_raw(u32::MAX); // -1: leave as it is
    setresuid(keep, Uid::from_raw(uid), keep).ctx("taking the requester's uid")?;
    setfsuid(Uid::from_raw(0));
    let out = f();
    if setresuid(keep, Uid::from_raw(0), keep).is_err() {
        taint("cannot return to uid 0");
    }
    Ok(out)
}

/// `SIGKILL` through a pidfd, with `CAP_KILL` if permitted. Errors (ESRCH:
/// gone already) are ignored: the caller sees the end by other means.
pub fn kill(pidfd: BorrowedFd<'_>) {
    let send = || spacer_core::fd::pidfd_send_signal(pidfd, libc::SIGKILL);
    if with_cap(CAP_KILL, send).is_err() {
        let _ = send();
    }
}
