//! Start-up confinement: one ordered sequence from "started as root" to
//! "four effective capabilities, three more permitted, no_new_privs,
//! non-dumpable, seccomp".

use std::fmt;
use std::os::fd::AsRawFd;

use caps::{CapSet, Capability, CapsHashSet};
use nix::sys::prctl;
use nix::unistd::{getppid, setgroups};
use spacer_proto::Channel;

use crate::seccomp::{self, SeccompMode};
use crate::serve::Role;
use crate::sys;

/// The capabilities the worker keeps, each for a reason the code proves:
///
/// * `CAP_SYS_ADMIN`: `unshare(2)` of every namespace type, `setns(2)` back
///   into the worker's own namespaces, `mount(2)` to make a new mount
///   namespace's `/` private.
/// * `CAP_SYS_CHROOT`: `setns(2)` into a mount namespace also requires it
///   (the worker returns to its own mount namespace after each mnt room).
/// * `CAP_SETUID`, `CAP_SETGID`: a subspace's user namespace must be *owned*
///   by the requester, i.e. created by a process whose effective ids are the
///   requester's; the new subspace worker switches to them (`setresuid`,
///   `setresgid`, `setgroups`) before `unshare(CLONE_NEWUSER)`.
/// * `CAP_SETFCAP`, permitted but **not effective**: since Linux 5.12 a user
///   namespace may map uid 0 of its parent only if its creator had
///   `CAP_SETFCAP` effective. Only a new subspace worker for a root
///   requester raises it, just for its `unshare`; every other one drops it
///   first. (The seccomp filter allows no xattr call, so the worker cannot
///   use it on files.)
/// * `CAP_NET_ADMIN`, permitted but **not effective**: the `loopback_up`
///   room option brings `lo` up in a new network namespace owned by the
///   worker's user namespace. Raised for those two ioctls only.
/// * `CAP_SYS_TIME`, permitted but **not effective**: the time offsets room
///   option; the kernel checks it when `/proc/self/timens_offsets` is
///   opened. Raised for that `open` only. (The seccomp filter allows no
///   call that sets a clock.)
/// * `CAP_SYS_PTRACE`, permitted but **not effective**: new mount and UTS
///   namespaces are copies of the *requesting process's*, which the worker
///   joins by `setns(pidfd, ...)` first; the kernel lets a process join
///   another's namespaces through a pidfd only where it could read that
///   process for ptrace (another uid, or more capabilities: this one).
///   Raised around those `setns` calls only; the filter allows no ptrace,
///   `process_vm_*` or `pidfd_getfd` call.
/// * `CAP_KILL`, permitted but **not effective**: the spawner ends a
///   subspace worker whose connection closed (it runs as the requester, so
///   a root process needs CAP_KILL to signal it). Raised around that one
///   `pidfd_send_signal(SIGKILL)` ([`kill`]); the filter allows no other
///   signal but the null one.
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

/// The worker's effective set: [`WORKER_CAPS`] without the permitted-only
/// `CAP_SETFCAP`, `CAP_NET_ADMIN` and `CAP_SYS_TIME`.
pub const WORKER_EFFECTIVE: [Capability; 4] = [
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
];

/// What a subspace worker keeps inside its own user namespace: it makes
/// rooms there and returns to its homes (`CAP_SYS_ADMIN`,
/// `CAP_SYS_CHROOT`), a nested subspace maps its root, uid 0 of this
/// namespace (`CAP_SETFCAP`, as above), and the room options need
/// `CAP_NET_ADMIN` and `CAP_SYS_TIME` (permitted only, as above).
/// Capabilities in a user namespace the requester owns are the requester's
/// own powers.
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

/// Sends `SIGKILL` through a pidfd, with `CAP_KILL` raised for the call if
/// it is permitted (the target may run as another uid). ESRCH (gone
/// already) and every other error are ignored: the caller waits for the
/// process's end by other means.
pub fn kill(pidfd: std::os::fd::BorrowedFd<'_>) {
    let send = || spacer_proto::fd::pidfd_send_signal(pidfd, libc::SIGKILL);
    // Without CAP_KILL (a private worker), as this process can.
    if crate::prepare::with_cap(Capability::CAP_KILL, send).is_err() {
        let _ = send();
    }
}

/// A failed step of the confinement sequence.
#[derive(Debug)]
pub struct ConfineError {
    step: &'static str,
    cause: String,
}

impl fmt::Display for ConfineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.cause)
    }
}

fn step<T, E: fmt::Display>(step: &'static str, r: Result<T, E>) -> Result<T, ConfineError> {
    r.map_err(|e| ConfineError {
        step,
        cause: e.to_string(),
    })
}

/// Checks that `channel` is what a legitimate parent hands us: a connected
/// `AF_UNIX` `SOCK_SEQPACKET` socket whose other end was created by our
/// parent process. A shell that starts the worker by hand cannot pass that.
pub fn check_channel(channel: &Channel) -> Result<(), ConfineError> {
    let cred = step("reading the channel's peer", channel.peer_credentials())?;
    let parent = getppid().as_raw();
    if cred.pid() != parent || parent <= 1 {
        return Err(ConfineError {
            step: "checking the channel",
            cause: "its other end does not belong to the process that started the worker".into(),
        });
    }
    Ok(())
}

/// The ordered drop, for a worker started by the broker as root, or by a
/// client library with the caller's own privileges (private mode: it keeps
/// the intersection of what it has and [`WORKER_CAPS`]).
pub fn confine(
    channel: &Channel,
    seccomp_mode: SeccompMode,
    role: Role,
) -> Result<(), ConfineError> {
    // 1. Die with the parent, and notice if it is already gone. Not in
    //    private mode: the parent-death signal follows the *thread* that
    //    started the worker, and a test harness ends threads while the
    //    process (and its client) lives on; end of stream on the channel
    //    covers the process dying.
    if role != Role::Private {
        step(
            "setting the parent-death signal",
            prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL),
        )?;
    }
    check_channel(channel)?;
    // 2. No fd but stdio and the channel.
    step(
        "closing inherited fds",
        sys::close_fds_except(&[channel.as_raw_fd()]),
    )?;
    step("changing to /", nix::unistd::chdir("/"))?;
    // 3. No supplementary groups (a subspace worker inherits them, and with
    //    setgroups denied could never drop them). Needs CAP_SETGID: a private
    //    worker of an unprivileged caller keeps its groups, which are the
    //    caller's own.
    if nix::unistd::geteuid().is_root() {
        step("dropping supplementary groups", setgroups(&[]))?;
    }
    // 4. A room worker makes rooms with the requester's uid as its
    //    effective uid (the kernel charges namespaces to it), keeping its
    //    capabilities across that switch. Needs CAP_SETPCAP, which goes next.
    if role == Role::Host {
        step(
            "keeping capabilities across uid changes",
            sys::keep_caps_across_uid_changes(),
        )?;
    }
    // 5. Capabilities: bounding, ambient and inheritable first (dropping from
    //    the bounding set needs CAP_SETPCAP, which goes with the next step).
    keep_only(&WORKER_CAPS, &WORKER_EFFECTIVE)?;
    // 6. A network namespace of its own (the host worker): the worker keeps
    //    CAP_NET_ADMIN for the loopback option, and its home network is then
    //    not the host's, whatever a subverted worker does with it. New
    //    network namespaces do not depend on their creator's.
    if role == Role::Host {
        step(
            "moving to a network namespace of its own",
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET),
        )?;
    }
    // 7. No privilege gain through exec, no ptrace or core dump of the worker.
    step("setting no_new_privs", prctl::set_no_new_privs())?;
    step("making the worker non-dumpable", prctl::set_dumpable(false))?;
    // 8. Exited children are reaped by the kernel, and orphaned descendants
    //    (a subspace worker whose parent ended) come here to be reaped, not
    //    to init.
    step("ignoring SIGCHLD", sys::autoreap_children())?;
    step(
        "becoming a child subreaper",
        prctl::set_child_subreaper(true),
    )?;
    // 9. Last: the syscall allow-list.
    step(
        "installing the seccomp filter",
        seccomp::install(seccomp_mode),
    )?;
    Ok(())
}

/// Reduces every capability set of this thread to `keep` (or to what the
/// thread has of it): bounding set (where CAP_SETPCAP allows), ambient,
/// inheritable, then effective (to `effective`, a subset) and permitted.
pub fn keep_only(keep: &[Capability], effective: &[Capability]) -> Result<(), ConfineError> {
    let permitted = step("reading capabilities", caps::read(None, CapSet::Permitted))?;
    let keep: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::all() {
            if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                step(
                    "dropping a capability from the bounding set",
                    caps::drop(None, CapSet::Bounding, cap),
                )?;
            }
        }
    }
    step(
        "clearing ambient capabilities",
        caps::clear(None, CapSet::Ambient),
    )?;
    step(
        "clearing inheritable capabilities",
        caps::clear(None, CapSet::Inheritable),
    )?;
    let effective: CapsHashSet = effective
        .iter()
        .copied()
        .filter(|c| keep.contains(c))
        .collect();
    step(
        "setting effective capabilities",
        caps::set(None, CapSet::Effective, &effective),
    )?;
    step(
        "setting permitted capabilities",
        caps::set(None, CapSet::Permitted, &keep),
    )?;
    Ok(())
}
