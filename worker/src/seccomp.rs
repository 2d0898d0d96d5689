//! The worker's system call allow-list, as typed code: one entry per
//! syscall, each naming the code that needs it, with arguments constrained
//! where seccomp can see them (it cannot follow pointers). Anything else
//! kills the whole process (`SECCOMP_RET_KILL_PROCESS`); `clone3` answers
//! `ENOSYS` so that a libc fallback would use the filtered `clone`. The
//! filter checks the architecture first (seccompiler emits that check).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use crate::sys::CLONE_FLAGS;
use crate::Role;

/// What a syscall outside the list does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompMode {
    /// Kill the process (production).
    Kill,
    /// Allow it and log it to the kernel audit log (development: find what
    /// is missing with `dmesg | grep 'type=1326'`).
    Log,
}

/// One syscall's entry: unconditional, or any of several argument
/// conditions (each an AND of comparisons).
struct Entry {
    nr: libc::c_long,
    any_of: Vec<Vec<(u8, Len, Op, u64)>>,
}

fn always(nr: libc::c_long) -> Entry {
    Entry {
        nr,
        any_of: Vec::new(),
    }
}

/// Allowed when `int` argument `arg` equals one of `values`. `int`
/// arguments are compared on their low 32 bits (`Dword`): the upper half of
/// the register is not defined for them.
fn arg_in(nr: libc::c_long, arg: u8, values: &[u64]) -> Entry {
    Entry {
        nr,
        any_of: values
            .iter()
            .map(|&v| vec![(arg, Len::Dword, Op::Eq, v)])
            .collect(),
    }
}

/// Allowed when `unsigned long` argument `arg` equals one of `values`.
fn long_arg_in(nr: libc::c_long, arg: u8, values: &[u64]) -> Entry {
    Entry {
        nr,
        any_of: values
            .iter()
            .map(|&v| vec![(arg, Len::Qword, Op::Eq, v)])
            .collect(),
    }
}

/// Allowed when `int` argument `arg` has no bit outside `allowed`.
fn arg_within(nr: libc::c_long, arg: u8, allowed: u64) -> Entry {
    Entry {
        nr,
        any_of: vec![vec![(
            arg,
            Len::Dword,
            Op::MaskedEq(!allowed & 0xffff_ffff),
            0,
        )]],
    }
}

const ROOM_FLAGS: [u64; 6] = [
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWTIME as u64,
    libc::CLONE_NEWUTS as u64,
];

/// The allow-list. Callers are named per entry; `tests/` runs the real
/// binary under this filter for every request type.
fn entries() -> Vec<Entry> {
    let unshare_allowed = ROOM_FLAGS.iter().fold(0, |a, f| a | f)
        | libc::CLONE_NEWUSER as u64
        | libc::CLONE_NEWPID as u64;
    // NS_GET_USERNS, NS_GET_NSTYPE and the ten PIDFD_GET_*_NAMESPACE ioctls;
    // sys::loopback_up: SIOCGIFFLAGS, SIOCSIFFLAGS.
    let mut ioctls = vec![0xb701, 0xb703];
    ioctls.extend((1..=10).map(|n| 0xff00 | n));
    ioctls.extend([libc::SIOCGIFFLAGS, libc::SIOCSIFFLAGS]);
    vec![
        // Channel::recv / Channel::send: the only way requests come and go.
        always(libc::SYS_recvmsg),
        always(libc::SYS_sendmsg),
        // Channel::peer_closed (poll with zero timeout; glibc may use either).
        always(libc::SYS_poll),
        always(libc::SYS_ppoll),
        // fd::is_unix_seqpacket on a new subspace's channel.
        always(libc::SYS_getsockopt),
        always(libc::SYS_getsockname),
        // subspace::spawn: the channel to a new subspace worker;
        // sys::loopback_up: a socket for the interface ioctls (a connected
        // pair cannot be aimed at any other socket).
        Entry {
            nr: libc::SYS_socketpair,
            any_of: vec![vec![
                (0, Len::Dword, Op::Eq, libc::AF_UNIX as u64),
                (
                    1,
                    Len::Dword,
                    Op::Eq,
                    (libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC) as u64,
                ),
            ]],
        },
        // prepare::apply: the names of a new UTS namespace (the worker is in
        // it while these run).
        always(libc::SYS_sethostname),
        always(libc::SYS_setdomainname),
        // Maker::rooms (one type at a time) and subspace setup (user+pid).
        arg_within(libc::SYS_unshare, 0, unshare_allowed),
        // Maker::go_home: back into the worker's own namespace of one type;
        // subspace::setup: a nested subspace worker joins its parent
        // subspace's user namespace (less privilege than the host's, which
        // it leaves for good), and a new subspace worker takes the
        // requester's PID namespace for its children (the one that makes
        // the new PID namespace). setns(fd, 0) would join any type: only
        // single flags pass.
        arg_in(
            libc::SYS_setns,
            1,
            &[
                &ROOM_FLAGS[..],
                &[libc::CLONE_NEWUSER as u64, libc::CLONE_NEWPID as u64],
            ]
            .concat(),
        ),
        // maker::make_root_private: MS_REC|MS_PRIVATE changes propagation
        // only; no bind, move, remount or new filesystem can pass.
        long_arg_in(libc::SYS_mount, 3, &[libc::MS_REC | libc::MS_PRIVATE]),
        // fd::namespace_type, fd::owning_user_namespace, maker::current.
        long_arg_in(libc::SYS_ioctl, 1, &ioctls),
        // fd::namespace_inode (fstat; glibc uses newfstatat or statx).
        always(libc::SYS_fstat),
        always(libc::SYS_newfstatat),
        always(libc::SYS_statx),
        // sys::clone_with_pidfd: subspace and serving workers, fork-like only.
        long_arg_in(libc::SYS_clone, 0, &[CLONE_FLAGS]),
        // Maker::new, subspace setup: own pidfd.
        arg_in(libc::SYS_pidfd_open, 1, &[0]),
        // fd::is_pidfd (signal 0), Supervisor::kill and kill_descendants
        // (SIGKILL): only ever through a pidfd.
        arg_in(libc::SYS_pidfd_send_signal, 1, &[0, libc::SIGKILL as u64]),
        // maker::current fallback to /proc/thread-self/ns (read-only),
        // subspace setup writing its own uid_map, gid_map, setgroups, and
        // prepare::offsets writing timens_offsets.
        arg_in(
            libc::SYS_openat,
            2,
            &[
                (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
                (libc::O_WRONLY | libc::O_CLOEXEC) as u64,
            ],
        ),
        // sys::namespace_alive (a room worker, for the broker's count of
        // live rooms): only with the nsfs marker as "mount fd", so only a
        // namespace can be opened, read-only. Any other mount fd (a file
        // system's) still kills the process.
        Entry {
            nr: libc::SYS_open_by_handle_at,
            any_of: vec![vec![
                (
                    0,
                    Len::Dword,
                    Op::Eq,
                    crate::sys::FD_NSFS_ROOT as u32 as u64,
                ),
                (
                    2,
                    Len::Dword,
                    Op::Eq,
                    (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
                ),
            ]],
        },
        // Writing the id maps and clock offsets; diagnostics on stderr.
        always(libc::SYS_write),
        // Dropping fds; sys::close_fds_except in a new subspace worker.
        always(libc::SYS_close),
        always(libc::SYS_close_range),
        // Subspace setup: become the requester, then root of the new user ns;
        // serve::as_requester: a room worker's effective uid for a request.
        always(libc::SYS_setresuid),
        always(libc::SYS_setresgid),
        always(libc::SYS_setgroups),
        // subspace::take_effective_ids: filesystem uid back to 0 (the real
        // uid), so a never-dumpable new worker can open its own /proc files.
        always(libc::SYS_setfsuid),
        always(libc::SYS_getuid),
        always(libc::SYS_geteuid),
        always(libc::SYS_getgid),
        always(libc::SYS_getegid),
        always(libc::SYS_getpid),
        always(libc::SYS_getppid),
        always(libc::SYS_gettid),
        // confine::keep_only in a subspace worker, prepare::with_cap (caps
        // crate).
        always(libc::SYS_capget),
        always(libc::SYS_capset),
        arg_in(
            libc::SYS_prctl,
            0,
            &[
                libc::PR_SET_KEEPCAPS as u64,
                libc::PR_SET_DUMPABLE as u64,
                libc::PR_GET_DUMPABLE as u64,
                libc::PR_CAPBSET_READ as u64,
                libc::PR_CAPBSET_DROP as u64,
                libc::PR_CAP_AMBIENT as u64,
                // serve::spawn_serving: the spawner's name.
                libc::PR_SET_NAME as u64,
                // subspace::pid_namespace_below: its short-lived child dies
                // with the new worker.
                libc::PR_SET_PDEATHSIG as u64,
            ],
        ),
        // Memory for the allocator; never executable.
        always(libc::SYS_brk),
        Entry {
            nr: libc::SYS_mmap,
            any_of: vec![vec![(
                2,
                Len::Dword,
                Op::MaskedEq(libc::PROT_EXEC as u64),
                0,
            )]],
        },
        always(libc::SYS_munmap),
        always(libc::SYS_mremap),
        always(libc::SYS_madvise),
        // Rust std: HashSet seeds (caps crate), lock slow paths, signals.
        always(libc::SYS_getrandom),
        always(libc::SYS_futex),
        always(libc::SYS_rt_sigreturn),
        always(libc::SYS_rt_sigprocmask),
        always(libc::SYS_sigaltstack),
        always(libc::SYS_restart_syscall),
        // prepare::check_clocks (and std's Instant, if the vDSO is missing).
        always(libc::SYS_clock_gettime),
        // OwnedFd::try_clone in the supervisor (a pidfd kept for Kill);
        // std's OwnedFd::drop checks F_GETFD first in debug builds.
        arg_in(
            libc::SYS_fcntl,
            1,
            &[libc::F_DUPFD_CLOEXEC as u64, libc::F_GETFD as u64],
        ),
        // sys::kill_descendants (private mode) reads its children list and
        // their status from /proc.
        always(libc::SYS_read),
        always(libc::SYS_nanosleep),
        always(libc::SYS_clock_nanosleep),
        // Leaving.
        always(libc::SYS_exit),
        always(libc::SYS_exit_group),
        // Allowed here so that the first filter's ENOSYS (not a kill) decides.
        always(libc::SYS_clone3),
    ]
}

fn arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())
}

fn build(
    entries: Vec<Entry>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for e in entries {
        let mut rs = Vec::new();
        for conds in e.any_of {
            let conds = conds
                .into_iter()
                .map(|(arg, len, op, v)| SeccompCondition::new(arg, len, op, v))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            rs.push(SeccompRule::new(conds).map_err(|e| e.to_string())?);
        }
        rules.insert(e.nr, rs);
    }
    let filter =
        SeccompFilter::new(rules, mismatch, matched, arch()?).map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// The filters of [`install`], built but not applied (a test builds them
/// before it forks, then applies them in the child with [`apply`]).
pub fn filters(mode: SeccompMode, _role: Role) -> Result<Vec<BpfProgram>, String> {
    let enosys = build(
        vec![always(libc::SYS_clone3)],
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    let mismatch = match mode {
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    };
    Ok(vec![
        enosys,
        build(entries(), mismatch, SeccompAction::Allow)?,
    ])
}

/// Applies `filters` to the calling thread (the worker has no other), in
/// order: `clone3` → `ENOSYS` first, since installing a filter calls
/// `prctl` and `seccomp`, which the allow-list does not allow. The kernel
/// runs both; `ENOSYS` outranks the allow-list's `Allow` for `clone3`.
pub fn apply(filters: &[BpfProgram]) -> Result<(), String> {
    for f in filters {
        seccompiler::apply_filter(f).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Installs the filters of a process that takes `role` first.
pub fn install(mode: SeccompMode, role: Role) -> Result<(), String> {
    MODE.store(
        mode == SeccompMode::Log,
        std::sync::atomic::Ordering::Relaxed,
    );
    apply(&filters(mode, role)?)
}

/// Whether this process's filters log instead of killing.
static MODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Narrows the filter of a process forked into `role` (filters stack).
pub fn narrow(_role: Role) -> Result<(), String> {
    Ok(())
}
