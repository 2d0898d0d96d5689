//! Start-up confinement: one ordered sequence from "started as root" to
//! "four effective capabilities, five more permitted, no_new_privs,
//! non-dumpable, seccomp".

use std::os::fd::AsRawFd;

use nix::sys::prctl;
use nix::unistd::{getppid, setgroups};
use spacer_proto::Channel;

use crate::privilege::{keep_only, WORKER_CAPS, WORKER_EFFECTIVE};
use crate::seccomp::{self, SeccompMode};
use crate::sys::{self, Ctx, Error};
use crate::Role;

/// Checks that `channel` is what a legitimate parent hands us: a connected
/// `AF_UNIX` `SOCK_SEQPACKET` socket whose other end was created by our
/// parent process. A shell that starts the worker by hand cannot pass that.
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

/// The ordered drop, for a worker started by the broker as root, or by a
/// client library with the caller's own privileges (private mode: it keeps
/// the intersection of what it has and [`WORKER_CAPS`]).
pub fn confine(channel: &Channel, seccomp_mode: SeccompMode, role: Role) -> Result<(), Error> {
    // 1. Die with the parent, and notice if it is already gone. Not in
    //    private mode: the parent-death signal follows the *thread* that
    //    started the worker, and a test harness ends threads while the
    //    process (and its client) lives on; end of stream on the channel
    //    covers the process dying.
    if role != Role::Private {
        prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
            .ctx("setting the parent-death signal")?;
    }
    check_channel(channel)?;
    // 2. No fd but stdio and the channel.
    // SAFETY: nothing in this process owns another fd yet.
    #[allow(unsafe_code)]
    let closed = unsafe { sys::close_fds_except(&[channel.as_raw_fd()]) };
    closed.ctx("closing inherited fds")?;
    nix::unistd::chdir("/").ctx("changing to /")?;
    // 3. No supplementary groups (a subspace worker inherits them, and with
    //    setgroups denied could never drop them). Needs CAP_SETGID: a private
    //    worker of an unprivileged caller keeps its groups, which are the
    //    caller's own.
    if nix::unistd::geteuid().is_root() {
        setgroups(&[]).ctx("dropping supplementary groups")?;
    }
    // 4. A room worker makes rooms with the requester's uid as its
    //    effective uid (the kernel charges namespaces to it), keeping its
    //    capabilities across that switch. Needs CAP_SETPCAP, which goes next.
    if role == Role::Supervisor {
        sys::keep_caps_across_uid_changes().ctx("keeping capabilities across uid changes")?;
    }
    // 5. Capabilities: bounding, ambient, inheritable, effective, permitted.
    keep_only(&WORKER_CAPS, &WORKER_EFFECTIVE)?;
    // 6. A network namespace of its own: the worker keeps CAP_NET_ADMIN for
    //    the loopback option, and its home network is then not the host's.
    //    New network namespaces do not depend on their creator's.
    if role == Role::Supervisor {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .ctx("moving to a network namespace of its own")?;
    }
    // 7. No privilege gain through exec, no ptrace or core dump of the worker.
    prctl::set_no_new_privs().ctx("setting no_new_privs")?;
    prctl::set_dumpable(false).ctx("making the worker non-dumpable")?;
    // 8. Exited children are reaped by the kernel, and orphaned descendants
    //    (a subspace worker whose parent ended) come here to be reaped, not
    //    to init.
    sys::autoreap_children().ctx("ignoring SIGCHLD")?;
    prctl::set_child_subreaper(true).ctx("becoming a child subreaper")?;
    // 9. Last: the syscall allow-list.
    seccomp::install(seccomp_mode, role)
        .map_err(|e| Error::msg(format!("installing the seccomp filter: {e}")))
}
