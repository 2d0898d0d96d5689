//! The workers' system call allow-lists, one per process [`Role`], as typed
//! code: each entry names the code that needs it, arguments constrained
//! where seccomp can see them. What the lists allow and how they were
//! checked: docs/ARCHITECTURE.md, "Seccomp".

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use libc::{c_int, c_long};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use crate::sys::{CLONE_FLAGS, FD_NSFS_ROOT};
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

/// One comparison: argument, width, operator, value.
type Cond = (u8, Len, Op, u64);

/// A syscall, allowed if any of its rules (each an AND of comparisons)
/// holds; with no rule, unconditionally.
struct Entry(c_long, Vec<Vec<Cond>>);

fn always(nr: c_long) -> Entry {
    Entry(nr, Vec::new())
}

/// `int` argument `arg` equals `v`. `int` arguments are compared on their
/// low 32 bits (`Dword`): the upper half of the register is not defined.
fn eq(arg: u8, v: u64) -> Cond {
    (arg, Len::Dword, Op::Eq, v)
}

/// Allowed when every one of `conds` holds.
fn all_of(nr: c_long, conds: &[Cond]) -> Entry {
    Entry(nr, vec![conds.to_vec()])
}

/// Allowed when `int` argument `arg` equals one of `values`.
fn arg_in(nr: c_long, arg: u8, values: &[c_int]) -> Entry {
    Entry(
        nr,
        values.iter().map(|&v| vec![eq(arg, v as u64)]).collect(),
    )
}

/// Allowed when `unsigned long` argument `arg` equals one of `values`.
fn long_arg_in(nr: c_long, arg: u8, values: &[u64]) -> Entry {
    let rule = |v| vec![(arg, Len::Qword, Op::Eq, v)];
    Entry(nr, values.iter().copied().map(rule).collect())
}

/// Allowed when `int` argument `arg` has none of the bits of `mask`.
fn no_bits(nr: c_long, arg: u8, mask: u64) -> Entry {
    all_of(nr, &[(arg, Len::Dword, Op::MaskedEq(mask), 0)])
}

/// Allowed when `int` argument `arg` has no bit outside `allowed`.
fn arg_within(nr: c_long, arg: u8, allowed: c_int) -> Entry {
    no_bits(nr, arg, !(allowed as u64) & 0xffff_ffff)
}

const ROOM_FLAGS: [c_int; 6] = [
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWTIME,
    libc::CLONE_NEWUTS,
];

/// `openat` read-only or write-only, never creating or truncating.
fn openat() -> Entry {
    let modes = [libc::O_RDONLY, libc::O_WRONLY].map(|m| m | libc::O_CLOEXEC);
    arg_in(libc::SYS_openat, 2, &modes)
}

/// An `AF_UNIX` `SOCK_SEQPACKET` pair, the only socket a worker makes.
fn socketpair() -> Entry {
    let kind = (libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC) as u64;
    all_of(
        libc::SYS_socketpair,
        &[eq(0, libc::AF_UNIX as u64), eq(1, kind)],
    )
}

/// Every process: the channel, memory (never executable), stderr, Rust's
/// runtime, leaving.
fn common() -> Vec<Entry> {
    vec![
        // Channel::recv / Channel::send; Channel::peer_closed and serve's
        // wait for pending setups (poll).
        always(libc::SYS_recvmsg),
        always(libc::SYS_sendmsg),
        always(libc::SYS_poll),
        // Dropping fds; diagnostics on stderr (a subspace worker's is
        // /dev/null).
        always(libc::SYS_close),
        always(libc::SYS_write),
        // The allocator: the suite never grows a worker's heap, but a larger
        // request must not kill it.
        always(libc::SYS_brk),
        no_bits(libc::SYS_mmap, 2, libc::PROT_EXEC as u64),
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
        // A stopped and continued wait; std's Instant without a vDSO clock.
        always(libc::SYS_restart_syscall),
        always(libc::SYS_clock_gettime),
        // OwnedFd::drop (F_GETFD, debug builds); OwnedFd::try_clone.
        arg_in(libc::SYS_fcntl, 1, &[libc::F_GETFD, libc::F_DUPFD_CLOEXEC]),
        // So that the first filter's ENOSYS (not a kill) decides.
        always(libc::SYS_clone3),
    ]
}

/// Starting and ending other workers.
fn forking() -> Vec<Entry> {
    let filter = libc::SECCOMP_SET_MODE_FILTER as u64;
    vec![
        long_arg_in(libc::SYS_clone, 0, &[CLONE_FLAGS]), // sys::clone_with_pidfd
        socketpair(),                                    // Channel::pair
        always(libc::SYS_close_range),                   // sys::close_fds_except
        // The child's name; narrow (one more filter, which can only take
        // permissions away).
        prctl(&[libc::PR_SET_NAME, libc::PR_SET_NO_NEW_PRIVS]),
        all_of(libc::SYS_seccomp, &[eq(0, filter), eq(1, 0)]),
        arg_in(libc::SYS_pidfd_send_signal, 1, &[libc::SIGKILL]), // privilege::kill
    ]
}

fn prctl(options: &[c_int]) -> Entry {
    arg_in(libc::SYS_prctl, 0, options)
}

/// Making rooms (maker).
fn rooms() -> Vec<Entry> {
    // NS_GET_USERNS, NS_GET_NSTYPE and the ten PIDFD_GET_*_NAMESPACE ioctls
    // (fd::namespace_type, fd::owning_user_namespace, maker::current);
    // sys::loopback_up: SIOCGIFFLAGS, SIOCSIFFLAGS.
    let mut ioctls = vec![0xb701, 0xb703];
    ioctls.extend((1..=10).map(|n| 0xff00 | n));
    ioctls.extend([libc::SIOCGIFFLAGS, libc::SIOCSIFFLAGS]);
    vec![
        // Maker::rooms one type at a time; Maker::go_home (setns(fd, 0)
        // would join any type: only single flags pass).
        arg_within(
            libc::SYS_unshare,
            0,
            ROOM_FLAGS.iter().fold(0, |a, f| a | f),
        ),
        arg_in(libc::SYS_setns, 1, &ROOM_FLAGS),
        // maker::make_root_private: propagation only; no bind, move,
        // remount or new filesystem can pass.
        long_arg_in(libc::SYS_mount, 3, &[libc::MS_REC | libc::MS_PRIVATE]),
        long_arg_in(libc::SYS_ioctl, 1, &ioctls),
        socketpair(), // sys::loopback_up
        // maker::apply: the names of the new UTS namespace it is in.
        always(libc::SYS_sethostname),
        always(libc::SYS_setdomainname),
        always(libc::SYS_newfstatat), // fd::namespace_inode (glibc's fstat)
        arg_in(libc::SYS_pidfd_open, 1, &[0]), // Maker::new: own pidfd
        always(libc::SYS_capset),     // privilege::with_cap
    ]
}

/// A new subspace worker's setup (subspace::setup), until it narrows its
/// filter. `host`: started by the spawner, which also joins the
/// requester's namespaces and takes its ids, and forks helpers.
fn subspace_setup(host: bool) -> Vec<Entry> {
    let user_pid = libc::CLONE_NEWUSER | libc::CLONE_NEWPID;
    let mut e = vec![
        arg_within(libc::SYS_unshare, 0, user_pid),
        // take_effective_ids, become_inside; the outer ids for the maps.
        always(libc::SYS_setresuid),
        always(libc::SYS_setresgid),
        always(libc::SYS_geteuid),
        always(libc::SYS_getegid),
        openat(),                 // /dev/null for stdio, /proc, the id maps, timens_offsets
        always(libc::SYS_capset), // take_effective_ids, keep_only
        arg_in(libc::SYS_pidfd_open, 1, &[0]), // setup: own pidfd
        // Its name; privilege::keep_only (bounding, ambient) in become_inside.
        prctl(&[
            libc::PR_SET_NAME,
            libc::PR_CAPBSET_READ,
            libc::PR_CAPBSET_DROP,
            libc::PR_CAP_AMBIENT,
        ]),
    ];
    if host {
        let joined = [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWUSER,
        ];
        e.extend([
            arg_in(libc::SYS_setns, 1, &joined), // setup: the requester's, a parent's
            always(libc::SYS_setgroups),         // take_effective_ids
            // take_effective_ids: filesystem uid back to 0 (the real uid).
            always(libc::SYS_setfsuid),
            prctl(&[libc::PR_SET_PDEATHSIG]), // start_helper
        ]);
    } else {
        // write_own_maps: a private worker's child is dumpable for them.
        e.push(prctl(&[libc::PR_SET_DUMPABLE]));
    }
    e
}

/// What a process in `role` calls itself.
fn calls(role: Role) -> Vec<Entry> {
    // fd::is_pidfd on the requester's pidfd (the null signal).
    let probe = || arg_in(libc::SYS_pidfd_send_signal, 1, &[0]);
    let mut e = common();
    match role {
        Role::Supervisor => e.extend(forking()),
        Role::Rooms => {
            let nsfs = FD_NSFS_ROOT as u32 as u64;
            let read_only = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
            e.extend(rooms());
            e.extend([
                // maker::offsets; maker::current's /proc fallback.
                openat(),
                // privilege::as_requester: the requester's effective uid.
                always(libc::SYS_setresuid),
                always(libc::SYS_setfsuid),
                probe(),
                // sys::namespace_alive: only with the nsfs marker as mount
                // fd (so only a namespace can be opened), read-only.
                all_of(
                    libc::SYS_open_by_handle_at,
                    &[eq(0, nsfs), eq(2, read_only)],
                ),
            ]);
        }
        Role::Spawner => {
            e.extend(forking());
            e.extend(subspace_setup(true));
            e.push(probe());
        }
        Role::HostSubspace => e.extend(rooms()),
        Role::Private | Role::Subspace => {
            e.extend(rooms());
            e.extend(forking());
            e.extend(subspace_setup(false));
            if role == Role::Private {
                // sys::kill_descendants: /proc (std sizes the read by
                // statx), and a pause between rounds.
                e.extend([libc::SYS_read, libc::SYS_statx, libc::SYS_clock_nanosleep].map(always));
            }
        }
    }
    e
}

/// The roles a process in `role` may become or fork (filters stack: a
/// child can only narrow its parent's).
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

/// The allow-list of `role`: what it and every process below it call. A
/// syscall allowed under several conditions is allowed under any of them;
/// unconditionally wins.
fn entries(role: Role) -> Vec<Entry> {
    let mut merged: BTreeMap<c_long, Option<Vec<Vec<Cond>>>> = BTreeMap::new();
    for Entry(nr, any_of) in tree(role).iter().flat_map(|&r| calls(r)) {
        let slot = merged.entry(nr).or_insert_with(|| Some(Vec::new()));
        if any_of.is_empty() {
            *slot = None;
        } else if let Some(conds) = slot {
            for c in any_of {
                if !conds.contains(&c) {
                    conds.push(c);
                }
            }
        }
    }
    let entry = |(nr, any_of): (_, Option<_>)| Entry(nr, any_of.unwrap_or_default());
    merged.into_iter().map(entry).collect()
}

/// The number of syscalls each role's own filter allows.
pub fn allowed(role: Role) -> usize {
    entries(role).len()
}

fn build(
    entries: Vec<Entry>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, String> {
    let mut rules = BTreeMap::new();
    for Entry(nr, any_of) in entries {
        let rule = |conds: Vec<Cond>| {
            let conds = conds
                .into_iter()
                .map(|(a, len, op, v)| SeccompCondition::new(a, len, op, v));
            SeccompRule::new(conds.collect::<Result<_, _>>()?)
        };
        let rs: Result<Vec<_>, _> = any_of.into_iter().map(rule).collect();
        rules.insert(nr, rs.map_err(|e| e.to_string())?);
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let filter = SeccompFilter::new(rules, mismatch, matched, arch).map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// The filters of a process that takes `role` first: `clone3` →
/// `ENOSYS`, then the allow-list of `role` and everything below it.
fn filters(mode: SeccompMode, role: Role) -> Result<Vec<BpfProgram>, String> {
    let enosys = SeccompAction::Errno(libc::ENOSYS as u32);
    let enosys = build(vec![always(libc::SYS_clone3)], SeccompAction::Allow, enosys)?;
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
/// order: the first allows the `prctl` and `seccomp` that install the next.
fn apply(filters: &[BpfProgram]) -> Result<(), String> {
    filters
        .iter()
        .try_for_each(|f| seccompiler::apply_filter(f).map_err(|e| e.to_string()))
}

/// Whether this process's filters log instead of killing.
static LOG: AtomicBool = AtomicBool::new(false);

/// Installs the filters of a process that takes `role` first.
pub fn install(mode: SeccompMode, role: Role) -> Result<(), String> {
    LOG.store(mode == SeccompMode::Log, Ordering::Relaxed);
    apply(&filters(mode, role)?)
}

/// Adds the allow-list of a process forked into `role`, in the mode the
/// first was installed with.
pub fn narrow(role: Role) -> Result<(), String> {
    let log = LOG.load(Ordering::Relaxed);
    apply(&[allow_list(
        if log {
            SeccompMode::Log
        } else {
            SeccompMode::Kill
        },
        role,
    )?])
}
