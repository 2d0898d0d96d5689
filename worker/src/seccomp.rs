//! The workers' system call allow-lists, as typed code, one per process
//! [`Role`]: each entry names the code that needs it, with arguments
//! constrained where seccomp can see them (it cannot follow pointers).
//! Anything else kills the whole process (`SECCOMP_RET_KILL_PROCESS`);
//! `clone3` answers `ENOSYS` so that a libc fallback would use the filtered
//! `clone`. The filter checks the architecture first (seccompiler emits
//! that check). How the lists were checked: docs/ARCHITECTURE.md, "Seccomp".

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

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
    any_of: Vec<Vec<Cond>>,
}

/// One comparison: argument, width, operator, value.
type Cond = (u8, Len, Op, u64);

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

fn flags(fs: &[libc::c_int]) -> Vec<u64> {
    fs.iter().map(|&f| f as u64).collect()
}

/// `openat` read-only or write-only, never creating or truncating.
fn openat() -> Entry {
    arg_in(
        libc::SYS_openat,
        2,
        &flags(&[
            libc::O_RDONLY | libc::O_CLOEXEC,
            libc::O_WRONLY | libc::O_CLOEXEC,
        ]),
    )
}

/// `prctl` with these options only.
fn prctl(options: &[libc::c_int]) -> Entry {
    arg_in(libc::SYS_prctl, 0, &flags(options))
}

/// Every process: the channel, memory (never executable), stderr, Rust's
/// runtime, leaving.
fn common() -> Vec<Entry> {
    vec![
        // Channel::recv / Channel::send: the only way requests come and go;
        // Channel::peer_closed (poll, zero timeout) tells end of stream from
        // an empty datagram; serve's loop waits for pending setups.
        always(libc::SYS_recvmsg),
        always(libc::SYS_sendmsg),
        always(libc::SYS_poll),
        // Dropping fds; diagnostics on stderr (a subspace worker's is
        // /dev/null).
        always(libc::SYS_close),
        always(libc::SYS_write),
        // The allocator. The suite never grows the heap a worker starts
        // with; these stay so that a larger request cannot kill a worker.
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
        always(libc::SYS_mremap),
        always(libc::SYS_madvise),
        // Leaving: std frees the main thread's signal stack.
        always(libc::SYS_munmap),
        always(libc::SYS_sigaltstack),
        always(libc::SYS_exit_group),
        // std's locks; std::process::id; the caps crate reads the sets.
        always(libc::SYS_futex),
        always(libc::SYS_gettid),
        always(libc::SYS_getpid),
        always(libc::SYS_capget),
        // A stopped and continued process resumes an interrupted wait.
        always(libc::SYS_restart_syscall),
        // Deadlines (std's Instant) where the clock has no vDSO.
        always(libc::SYS_clock_gettime),
        // std's OwnedFd::drop checks F_GETFD first in debug builds;
        // OwnedFd::try_clone (pidfds kept by the supervisor and spawner).
        arg_in(
            libc::SYS_fcntl,
            1,
            &flags(&[libc::F_GETFD, libc::F_DUPFD_CLOEXEC]),
        ),
        // Allowed here so that the first filter's ENOSYS (not a kill) decides.
        always(libc::SYS_clone3),
    ]
}

/// Starting other workers: sys::clone_with_pidfd (fork-like only), the
/// channel to each (a connected pair cannot be aimed at any other socket),
/// closing the parent's fds in the child, its name, narrowing its filter,
/// ending one (SIGKILL, only ever through a pidfd).
fn forking() -> Vec<Entry> {
    vec![
        long_arg_in(libc::SYS_clone, 0, &[CLONE_FLAGS]),
        socketpair(),
        always(libc::SYS_close_range),
        prctl(&[libc::PR_SET_NAME, libc::PR_SET_NO_NEW_PRIVS]),
        // narrow, in the new process: one more filter. A filter can only
        // take permissions away.
        Entry {
            nr: libc::SYS_seccomp,
            any_of: vec![vec![
                (0, Len::Dword, Op::Eq, libc::SECCOMP_SET_MODE_FILTER as u64),
                (1, Len::Dword, Op::Eq, 0),
            ]],
        },
        arg_in(libc::SYS_pidfd_send_signal, 1, &[libc::SIGKILL as u64]),
    ]
}

/// An `AF_UNIX` `SOCK_SEQPACKET` pair, the only socket a worker makes.
fn socketpair() -> Entry {
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
    }
}

/// Making rooms (maker, prepare).
fn rooms() -> Vec<Entry> {
    // NS_GET_USERNS, NS_GET_NSTYPE and the ten PIDFD_GET_*_NAMESPACE ioctls
    // (fd::namespace_type, fd::owning_user_namespace, maker::current);
    // sys::loopback_up: SIOCGIFFLAGS, SIOCSIFFLAGS.
    let mut ioctls = vec![0xb701, 0xb703];
    ioctls.extend((1..=10).map(|n| 0xff00 | n));
    ioctls.extend([libc::SIOCGIFFLAGS, libc::SIOCSIFFLAGS]);
    vec![
        // Maker::rooms: one type at a time; Maker::go_home: back into the
        // worker's own namespace of that type (setns(fd, 0) would join any
        // type: only single flags pass).
        arg_within(
            libc::SYS_unshare,
            0,
            ROOM_FLAGS.iter().fold(0, |a, f| a | f),
        ),
        arg_in(libc::SYS_setns, 1, &ROOM_FLAGS),
        // maker::make_root_private: MS_REC|MS_PRIVATE changes propagation
        // only; no bind, move, remount or new filesystem can pass.
        long_arg_in(libc::SYS_mount, 3, &[libc::MS_REC | libc::MS_PRIVATE]),
        long_arg_in(libc::SYS_ioctl, 1, &ioctls),
        // sys::loopback_up: the socket for the interface ioctls.
        socketpair(),
        // prepare::apply: the names of a new UTS namespace (the worker is in
        // it while these run).
        always(libc::SYS_sethostname),
        always(libc::SYS_setdomainname),
        // fd::namespace_inode (fstat, which glibc makes newfstatat).
        always(libc::SYS_newfstatat),
        // Maker::new: own pidfd.
        arg_in(libc::SYS_pidfd_open, 1, &[0]),
        // privilege::with_cap (loopback, clock offsets, the requester's
        // namespaces).
        always(libc::SYS_capset),
    ]
}

/// A new subspace worker's setup (subspace::setup), until it narrows its
/// filter: making the user and PID namespaces, writing the maps, becoming
/// the requester inside. `host`: started by the spawner, which also joins
/// the requester's namespaces and a parent subspace's user namespace,
/// takes the requester's ids first, and forks helpers that die with it.
fn subspace_setup(host: bool) -> Vec<Entry> {
    let mut e = vec![
        arg_within(
            libc::SYS_unshare,
            0,
            (libc::CLONE_NEWUSER | libc::CLONE_NEWPID) as u64,
        ),
        always(libc::SYS_setresuid),
        always(libc::SYS_setresgid),
        always(libc::SYS_geteuid),
        always(libc::SYS_getegid),
        // /dev/null for stdio, /proc, the id maps and timens_offsets.
        openat(),
        always(libc::SYS_capset),
        arg_in(libc::SYS_pidfd_open, 1, &[0]),
        // privilege::keep_only (bounding and ambient sets) in become_inside.
        prctl(&[
            libc::PR_SET_NAME,
            libc::PR_CAPBSET_READ,
            libc::PR_CAPBSET_DROP,
            libc::PR_CAP_AMBIENT,
        ]),
    ];
    if host {
        e.extend([
            arg_in(
                libc::SYS_setns,
                1,
                &flags(&[
                    libc::CLONE_NEWNS,
                    libc::CLONE_NEWUTS,
                    libc::CLONE_NEWPID,
                    libc::CLONE_NEWUSER,
                ]),
            ),
            always(libc::SYS_setgroups),
            // subspace::take_effective_ids: filesystem uid back to 0 (the
            // real uid), so a never-dumpable new worker can open its own
            // /proc files.
            always(libc::SYS_setfsuid),
            // subspace::start_helper: the helper dies with the new worker.
            prctl(&[libc::PR_SET_PDEATHSIG]),
        ]);
    } else {
        // subspace::write_own_maps: a private worker's child is dumpable
        // while it writes its own maps.
        e.push(prctl(&[libc::PR_SET_DUMPABLE]));
    }
    e
}

/// What a process in `role` calls itself.
fn calls(role: Role) -> Vec<Entry> {
    let mut e = common();
    match role {
        Role::Supervisor => e.extend(forking()),
        Role::Rooms => {
            e.extend(rooms());
            e.extend([
                // prepare::offsets opening timens_offsets (and
                // maker::current's fallback to /proc/thread-self/ns before
                // Linux 6.11).
                openat(),
                // privilege::as_requester: the requester's effective uid.
                always(libc::SYS_setresuid),
                always(libc::SYS_setfsuid),
                // fd::is_pidfd on the requester's pidfd (signal 0).
                arg_in(libc::SYS_pidfd_send_signal, 1, &[0]),
                // sys::namespace_alive, for the broker's count of live
                // rooms: only with the nsfs marker as "mount fd", so only a
                // namespace can be opened, read-only.
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
            ]);
        }
        Role::Spawner => {
            e.extend(forking());
            e.extend(subspace_setup(true));
            // fd::is_pidfd on the requester's pidfd (signal 0).
            e.push(arg_in(libc::SYS_pidfd_send_signal, 1, &[0]));
        }
        Role::HostSubspace => e.extend(rooms()),
        Role::Private | Role::Subspace => {
            e.extend(rooms());
            e.extend(forking());
            e.extend(subspace_setup(false));
            if role == Role::Private {
                // sys::kill_descendants: its children list and their status
                // from /proc (std sizes the read by statx), and a pause
                // between rounds.
                e.extend([
                    always(libc::SYS_read),
                    always(libc::SYS_statx),
                    always(libc::SYS_clock_nanosleep),
                ]);
            }
        }
    }
    e
}

/// The roles of the processes a process in `role` may become or fork
/// (filters stack: a child can only narrow its parent's).
fn tree(role: Role) -> &'static [Role] {
    match role {
        Role::Supervisor => &[
            Role::Supervisor,
            Role::Rooms,
            Role::Spawner,
            Role::HostSubspace,
        ],
        Role::Spawner => &[Role::Spawner, Role::HostSubspace],
        Role::Rooms => &[Role::Rooms],
        Role::HostSubspace => &[Role::HostSubspace],
        Role::Private => &[Role::Private, Role::Subspace],
        Role::Subspace => &[Role::Subspace],
    }
}

/// The allow-list of a process in `role`: what it and every process below
/// it call. One syscall allowed by several roles under different argument
/// conditions is allowed under any of them.
fn entries(role: Role) -> Vec<Entry> {
    let mut merged: BTreeMap<libc::c_long, Option<Vec<Vec<Cond>>>> = BTreeMap::new();
    for e in tree(role).iter().flat_map(|&r| calls(r)) {
        let slot = merged.entry(e.nr).or_insert_with(|| Some(Vec::new()));
        match (slot.as_mut(), e.any_of.is_empty()) {
            // Unconditional wins over any condition.
            (_, true) => *slot = None,
            (Some(conds), false) => {
                for c in e.any_of {
                    if !conds.contains(&c) {
                        conds.push(c);
                    }
                }
            }
            (None, false) => {}
        }
    }
    merged
        .into_iter()
        .map(|(nr, any_of)| Entry {
            nr,
            any_of: any_of.unwrap_or_default(),
        })
        .collect()
}

/// The number of syscalls each role's own filter allows.
pub fn allowed(role: Role) -> usize {
    entries(role).len()
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

/// The filters of a process that takes `role` first: `clone3` →
/// `ENOSYS`, and the allow-list of `role` and everything below it.
pub fn filters(mode: SeccompMode, role: Role) -> Result<Vec<BpfProgram>, String> {
    let enosys = build(
        vec![always(libc::SYS_clone3)],
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    Ok(vec![enosys, allow_list(mode, role)?])
}

fn allow_list(mode: SeccompMode, role: Role) -> Result<BpfProgram, String> {
    let mismatch = match mode {
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    };
    build(entries(role), mismatch, SeccompAction::Allow)
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

/// Whether this process's filters log instead of killing.
static LOG: AtomicBool = AtomicBool::new(false);

/// Installs the filters of a process that takes `role` first.
pub fn install(mode: SeccompMode, role: Role) -> Result<(), String> {
    LOG.store(mode == SeccompMode::Log, Ordering::Relaxed);
    apply(&filters(mode, role)?)
}

/// Narrows the filters of a process forked into `role`: its own allow-list
/// is added (filters stack; a call must pass all of them), in the mode
/// the first was installed with.
pub fn narrow(role: Role) -> Result<(), String> {
    let mode = if LOG.load(Ordering::Relaxed) {
        SeccompMode::Log
    } else {
        SeccompMode::Kill
    };
    apply(&[allow_list(mode, role)?])
}
