//! The workers' syscall allow-lists, one per process [`Role`] (private
//! mode's parts list theirs in `spacer-private-worker`, from the groups
//! here), as typed code: each entry names its caller; arguments are
//! constrained where seccomp can see them. Why, and how the lists were
//! checked: docs/ARCHITECTURE.md, "Seccomp".

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use libc::{c_int, c_long};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use crate::sys::{CLONE_FLAGS, FD_NSFS_ROOT};
use crate::{Part, Role};

/// What a syscall outside the list does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Kill the process (production).
    Kill,
    /// Allow and log it (development: `dmesg | grep 'type=1326'`).
    Log,
}

impl Mode {
    /// `Log` if `log`, else `Kill`.
    pub fn logging(log: bool) -> Mode {
        if log {
            Mode::Log
        } else {
            Mode::Kill
        }
    }
}

/// One comparison: argument, width, operator, value.
type Cond = (u8, Len, Op, u64);

/// A syscall, allowed if any of its rules (each an AND of comparisons)
/// holds; with no rule, always.
pub struct Entry(c_long, Vec<Vec<Cond>>);

/// `nr`, whatever its arguments.
pub fn always(nr: c_long) -> Entry {
    Entry(nr, Vec::new())
}

/// `int` argument `arg` equals `v` (its low 32 bits: the upper half of the
/// register is not defined for an `int`).
fn eq(arg: u8, v: c_int) -> Cond {
    (arg, Len::Dword, Op::Eq, v as u32 as u64)
}

fn all_of(nr: c_long, conds: &[Cond]) -> Entry {
    Entry(nr, vec![conds.to_vec()])
}

/// `int` argument `arg` is one of `values`.
pub fn arg_in(nr: c_long, arg: u8, values: &[c_int]) -> Entry {
    Entry(nr, values.iter().map(|&v| vec![eq(arg, v)]).collect())
}

/// `unsigned long` argument `arg` is one of `values`.
fn long_arg_in(nr: c_long, arg: u8, values: &[u64]) -> Entry {
    let rule = |v| vec![(arg, Len::Qword, Op::Eq, v)];
    Entry(nr, values.iter().copied().map(rule).collect())
}

/// `int` argument `arg` has no bit outside `allowed`.
fn arg_within(nr: c_long, arg: u8, allowed: c_int) -> Entry {
    let outside = !(allowed as u32) as u64;
    all_of(nr, &[(arg, Len::Dword, Op::MaskedEq(outside), 0)])
}

/// `prctl` with one of `options`.
pub fn prctl_ops(options: &[c_int]) -> Entry {
    arg_in(libc::SYS_prctl, 0, options)
}

/// Read-only or write-only, never creating or truncating.
fn open_plain() -> Entry {
    let modes = [libc::O_RDONLY, libc::O_WRONLY].map(|m| m | libc::O_CLOEXEC);
    arg_in(libc::SYS_openat, 2, &modes)
}

/// An `AF_UNIX` `SOCK_SEQPACKET` pair, the only socket a worker makes.
fn unix_pair() -> Entry {
    let kind = libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC;
    all_of(libc::SYS_socketpair, &[eq(0, libc::AF_UNIX), eq(1, kind)])
}

const ROOM_FLAGS: [c_int; 6] = [
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWTIME,
    libc::CLONE_NEWUTS,
];

/// Every process: the channel, memory (never executable), stderr, std's
/// runtime, leaving.
pub fn common() -> Vec<Entry> {
    use libc::*;
    let mut e: Vec<Entry> = [
        SYS_recvmsg, // Channel::recv
        SYS_sendmsg, // Channel::send
        SYS_poll,    // Channel (end of stream, peer_closed), serve's wait
        SYS_close,   // dropping fds
        SYS_write,   // stderr (a subspace worker's is /dev/null)
        // The allocator: no test grows a heap, but a larger request must
        // not kill a worker.
        SYS_brk,
        SYS_mremap,
        SYS_madvise,
        SYS_munmap,          // also std at exit (the signal stack)
        SYS_sigaltstack,     // std at exit
        SYS_exit_group,      // leaving
        SYS_futex,           // std's locks
        SYS_gettid,          // std's locks
        SYS_getpid,          // std::process::id
        SYS_capget,          // the caps crate
        SYS_restart_syscall, // a stopped and continued wait
        SYS_clock_gettime,   // Instant without a vDSO clock
        SYS_clone3,          // so that the first filter's ENOSYS decides
    ]
    .map(always)
    .into();
    e.extend([
        arg_within(SYS_mmap, 2, PROT_READ | PROT_WRITE),
        // OwnedFd::drop (debug builds), OwnedFd::try_clone.
        arg_in(SYS_fcntl, 1, &[F_GETFD, F_DUPFD_CLOEXEC]),
    ]);
    e
}

/// Starting and ending other workers.
pub fn forking() -> Vec<Entry> {
    use libc::*;
    vec![
        long_arg_in(SYS_clone, 0, &[CLONE_FLAGS]), // sys::fork_with_channel
        unix_pair(),                               // Channel::pair
        always(SYS_close_range),                   // sys::close_fds_except
        prctl_ops(&[PR_SET_NAME, PR_SET_NO_NEW_PRIVS]), // the child's name; narrow
        // narrow: one more filter, which can only take permissions away.
        all_of(
            SYS_seccomp,
            &[eq(0, SECCOMP_SET_MODE_FILTER as c_int), eq(1, 0)],
        ),
        arg_in(SYS_pidfd_send_signal, 1, &[SIGKILL]), // privilege::kill
    ]
}

/// Making rooms (maker).
pub fn rooms() -> Vec<Entry> {
    use libc::*;
    // NS_GET_USERNS, NS_GET_NSTYPE, the ten PIDFD_GET_*_NAMESPACE (proto's
    // fd module, maker::current); the lo flags (sys::loopback_up).
    let mut ioctls = vec![0xb701, 0xb703];
    ioctls.extend((1..=10).map(|n| 0xff00 | n));
    ioctls.extend([SIOCGIFFLAGS, SIOCSIFFLAGS]);
    vec![
        // Maker::rooms, one type at a time; Maker::go_home (setns(fd, 0)
        // would join any type).
        arg_within(SYS_unshare, 0, ROOM_FLAGS.iter().fold(0, |a, f| a | f)),
        arg_in(SYS_setns, 1, &ROOM_FLAGS),
        // maker::make_root_private: propagation only.
        long_arg_in(SYS_mount, 3, &[MS_REC | MS_PRIVATE]),
        long_arg_in(SYS_ioctl, 1, &ioctls),
        unix_pair(),                     // sys::loopback_up
        always(SYS_sethostname),         // maker::apply
        always(SYS_setdomainname),       // maker::apply
        always(SYS_newfstatat),          // fd::namespace_inode
        arg_in(SYS_pidfd_open, 1, &[0]), // Maker::new
        always(SYS_capset),              // privilege::with_cap
    ]
}

/// A new subspace worker's setup (subspace::setup), until it narrows; a
/// host one (started by the spawner) adds [`host_subspace_setup`].
pub fn subspace_setup() -> Vec<Entry> {
    use libc::*;
    vec![
        arg_within(SYS_unshare, 0, CLONE_NEWUSER | CLONE_NEWPID),
        always(SYS_setresuid),           // take_effective_ids, become_inside
        always(SYS_setresgid),           // take_effective_ids, become_inside
        always(SYS_geteuid),             // the outer ids for the maps
        always(SYS_getegid),             // the outer ids for the maps
        open_plain(),                    // /dev/null, /proc, the maps, timens_offsets
        always(SYS_capset),              // take_effective_ids, keep_only
        arg_in(SYS_pidfd_open, 1, &[0]), // own pidfd
        // Its name; privilege::keep_only in become_inside.
        prctl_ops(&[
            PR_SET_NAME,
            PR_CAPBSET_READ,
            PR_CAPBSET_DROP,
            PR_CAP_AMBIENT,
        ]),
    ]
}

/// What a subspace worker the spawner starts adds to its setup: it joins
/// the requester's namespaces, takes its ids, forks helpers.
fn host_subspace_setup() -> Vec<Entry> {
    use libc::*;
    vec![
        // The requester's namespaces; a parent subspace's user namespace.
        arg_in(
            SYS_setns,
            1,
            &[CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWPID, CLONE_NEWUSER],
        ),
        always(SYS_setgroups),          // take_effective_ids
        always(SYS_setfsuid),           // take_effective_ids: back to 0
        prctl_ops(&[PR_SET_PDEATHSIG]), // start_helper
    ]
}

/// What a process in `role` calls itself.
pub(crate) fn calls(role: Role) -> Vec<Entry> {
    use libc::*;
    // fd::is_pidfd on the requester's pidfd (the null signal).
    let probe = || arg_in(SYS_pidfd_send_signal, 1, &[0]);
    let mut e = common();
    match role {
        Role::Supervisor => e.extend(forking()),
        Role::Rooms => {
            let read_only = O_RDONLY | O_CLOEXEC;
            e.extend(rooms());
            e.extend([
                open_plain(),          // maker::write_offsets; maker::current's fallback
                always(SYS_setresuid), // privilege::as_requester
                always(SYS_setfsuid),  // privilege::as_requester
                probe(),
                // sys::namespace_alive: namespaces only, read-only.
                all_of(
                    SYS_open_by_handle_at,
                    &[eq(0, FD_NSFS_ROOT), eq(2, read_only)],
                ),
            ]);
        }
        Role::Spawner => {
            e.extend(forking());
            e.extend(subspace_setup());
            e.extend(host_subspace_setup());
            e.push(probe());
        }
        Role::HostSubspace => e.extend(rooms()),
    }
    e
}

/// The roles a process in `role` may become or fork (filters stack: a
/// child can only narrow its parent's).
pub(crate) fn tree(role: Role) -> &'static [Role] {
    use Role::*;
    match role {
        Supervisor => &[Supervisor, Rooms, Spawner, HostSubspace],
        Spawner => &[Spawner, HostSubspace],
        Rooms => &[Rooms],
        HostSubspace => &[HostSubspace],
    }
}

/// The allow-list of `role` and every role below it, by syscall: `None`
/// is unconditional (which wins), else any of the rules.
fn entries<P: Part>(role: P) -> BTreeMap<c_long, Option<Vec<Vec<Cond>>>> {
    let mut merged = BTreeMap::new();
    for Entry(nr, any_of) in role.tree().iter().flat_map(|&r| r.calls()) {
        let slot = merged.entry(nr).or_insert_with(|| Some(Vec::new()));
        match slot {
            _ if any_of.is_empty() => *slot = None,
            Some(rules) => any_of.into_iter().for_each(|r| {
                if !rules.contains(&r) {
                    rules.push(r)
                }
            }),
            None => {}
        }
    }
    merged
}

/// The number of syscalls `role`'s own list allows.
pub fn allowed<P: Part>(role: P) -> usize {
    entries(role).len()
}

fn build(
    entries: BTreeMap<c_long, Option<Vec<Vec<Cond>>>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, String> {
    let cond = |(a, len, op, v)| SeccompCondition::new(a, len, op, v);
    let rule = |r: Vec<Cond>| SeccompRule::new(r.into_iter().map(cond).collect::<Result<_, _>>()?);
    let mut rules = BTreeMap::new();
    for (nr, any_of) in entries {
        let any_of: Result<_, _> = any_of.unwrap_or_default().into_iter().map(rule).collect();
        rules.insert(
            nr,
            any_of.map_err(|e: seccompiler::BackendError| e.to_string())?,
        );
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let filter = SeccompFilter::new(rules, mismatch, matched, arch).map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// The allow-list of `role`, in `mode`.
fn allow_list<P: Part>(mode: Mode, role: P) -> Result<BpfProgram, String> {
    let mismatch = match mode {
        Mode::Kill => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
    };
    build(entries(role), mismatch, SeccompAction::Allow)
}

fn apply(filter: &BpfProgram) -> Result<(), String> {
    seccompiler::apply_filter(filter).map_err(|e| e.to_string())
}

/// Whether this process's filters log instead of killing.
static LOG: AtomicBool = AtomicBool::new(false);

/// Installs the filters of a process that takes `role` first (the worker
/// has one thread): `clone3` → `ENOSYS`, which also allows the `prctl` and
/// `seccomp` that install the next; then `role`'s allow-list.
pub fn install<P: Part>(mode: Mode, role: P) -> Result<(), String> {
    LOG.store(mode == Mode::Log, Ordering::Relaxed);
    let clone3 = BTreeMap::from([(libc::SYS_clone3, None)]);
    let enosys = SeccompAction::Errno(libc::ENOSYS as u32);
    apply(&build(clone3, SeccompAction::Allow, enosys)?)?;
    apply(&allow_list(mode, role)?)
}

/// Adds the allow-list of a process forked into `role`, in the mode the
/// first was installed with.
pub fn narrow<P: Part>(role: P) -> Result<(), String> {
    apply(&allow_list(
        Mode::logging(LOG.load(Ordering::Relaxed)),
        role,
    )?)
}
