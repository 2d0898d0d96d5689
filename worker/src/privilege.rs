//! Capabilities and ids: the sets each worker keeps, and the only places
//! one is raised or an id taken for a while. Why each capability is needed
//! is argued in README.md, "Privileges".
//!
//! Whatever cannot be undone (a capability that will not go down, an
//! effective uid that will not return to 0) marks the process as
//! [`tainted`]: its serving loop then ends through its normal clean-up, and
//! it serves nothing more.

use std::sync::atomic::{AtomicBool, Ordering};

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{setfsuid, setresuid, Uid};

use crate::sys::{Ctx, Error};

/// Every capability the worker may hold (bounding and permitted sets).
pub const WORKER_CAPS: [Capability; 9] = [
    Capability::CAP_KILL,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_SETFCAP,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_SYS_TIME,
];

/// The worker's effective set; the others of [`WORKER_CAPS`] are raised
/// around the one call that needs each ([`with_cap`]).
pub const WORKER_EFFECTIVE: [Capability; 4] = [
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
];

/// What a subspace worker keeps, inside its own user namespace (the
/// requester's own powers there).
pub const SUBSPACE_CAPS: [Capability; 5] = [
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_SETFCAP,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_SYS_TIME,
];

/// A subspace worker's effective set.
pub const SUBSPACE_EFFECTIVE: [Capability; 3] = [
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_SETFCAP,
];

static TAINTED: AtomicBool = AtomicBool::new(false);

/// Whether this process holds a capability or id it could not give back.
pub fn tainted() -> bool {
    TAINTED.load(Ordering::Relaxed)
}

fn taint(what: &str) {
    eprintln!("spacer-worker: {what}; serving nothing more");
    TAINTED.store(true, Ordering::Relaxed);
}

/// Reduces every capability set of this thread to `keep` (or to what the
/// thread has of it): bounding set (where CAP_SETPCAP allows), ambient,
/// inheritable, then effective (to `effective`, a subset) and permitted.
pub fn keep_only(keep: &[Capability], effective: &[Capability]) -> Result<(), Error> {
    fn caps_err(what: &'static str) -> impl Fn(caps::errors::CapsError) -> Error {
        move |e| Error::msg(format!("{what}: {e}"))
    }
    let permitted =
        caps::read(None, CapSet::Permitted).map_err(caps_err("reading capabilities"))?;
    let keep: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::all() {
            if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap)
                    .map_err(caps_err("dropping a capability from the bounding set"))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("clearing ambient capabilities"))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(caps_err("clearing inheritable capabilities"))?;
    let effective: CapsHashSet = effective
        .iter()
        .copied()
        .filter(|c| keep.contains(c))
        .collect();
    caps::set(None, CapSet::Effective, &effective)
        .map_err(caps_err("setting effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(caps_err("setting permitted capabilities"))
}

/// Runs `f` with `cap` in the effective set (raised from the permitted set
/// unless it is effective already), and lowers it again after.
pub fn with_cap<T>(cap: Capability, f: impl FnOnce() -> T) -> Result<T, Error> {
    let was = caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    // Raising fails when the permitted set lacks it.
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

/// Runs `f` with `uid` (if any) as the effective uid, the filesystem uid
/// staying 0 (the worker's own `/proc/self` files are root's) and the
/// capabilities kept (`SECBIT_NO_SETUID_FIXUP`, set at start): what a room
/// worker makes is charged by the kernel to the requester.
pub fn as_requester<T>(uid: Option<u32>, f: impl FnOnce() -> T) -> Result<T, Error> {
    let Some(uid) = uid else { return Ok(f()) };
    // -1: leave that id as it is.
    let keep = Uid::from_raw(u32::MAX);
    setresuid(keep, Uid::from_raw(uid), keep).ctx("taking the requester's uid")?;
    setfsuid(Uid::from_raw(0));
    let out = f();
    if setresuid(keep, Uid::from_raw(0), keep).is_err() {
        taint("cannot return to uid 0");
    }
    Ok(out)
}

/// Sends `SIGKILL` through a pidfd, with `CAP_KILL` raised for the call if
/// it is permitted (the target may run as another uid). ESRCH (gone
/// already) and every other error are ignored: the caller waits for the
/// process's end by other means.
pub fn kill(pidfd: std::os::fd::BorrowedFd<'_>) {
    let send = || spacer_proto::fd::pidfd_send_signal(pidfd, libc::SIGKILL);
    // Without CAP_KILL (a private worker), as this process can.
    if with_cap(Capability::CAP_KILL, send).is_err() {
        let _ = send();
    }
}
