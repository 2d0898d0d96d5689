//! The seccomp check both worker binaries' tests run (a module of
//! `worker/tests/seccomp.rs`, `private/tests/seccomp.rs`): forbidden calls
//! in child processes of the test (it re-runs itself with `SECCOMP_CALL`
//! set) must kill the child with `SIGSYS` under every part's filters, and
//! `--seccomp log` (seccomp::Mode::Log) must let it through. Needs no
//! privilege. Run from a plain `main` (no test harness): the child must be
//! single-threaded when it installs the filter.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use spacer_worker::seccomp::{self, Mode};
use spacer_worker::Part;

/// Calls no role may make, with arguments that do nothing harmful if one
/// were let through: null pointers, invalid fds, a zero pid.
pub const FORBIDDEN: &[(&str, libc::c_long, [libc::c_long; 5])] = &[
    (
        "ptrace",
        libc::SYS_ptrace,
        [libc::PTRACE_TRACEME as libc::c_long, 0, 0, 0, 0],
    ),
    ("bpf", libc::SYS_bpf, [-1, 0, 0, 0, 0]),
    ("init_module", libc::SYS_init_module, [0; 5]),
    ("kexec_load", libc::SYS_kexec_load, [0; 5]),
    (
        "open_by_handle_at",
        libc::SYS_open_by_handle_at,
        [-1, 0, 0, 0, 0],
    ),
    ("execve", libc::SYS_execve, [0; 5]),
    (
        "mount-bind",
        libc::SYS_mount,
        [0, 0, 0, libc::MS_BIND as libc::c_long, 0],
    ),
    (
        "mount-move",
        libc::SYS_mount,
        [0, 0, 0, libc::MS_MOVE as libc::c_long, 0],
    ),
    ("setns-any-type", libc::SYS_setns, [-1, 0, 0, 0, 0]),
    (
        "unshare-files",
        libc::SYS_unshare,
        [libc::CLONE_FILES as libc::c_long, 0, 0, 0, 0],
    ),
    (
        "clone-thread",
        libc::SYS_clone,
        [
            (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as libc::c_long,
            -1,
            0,
            0,
            0,
        ],
    ),
    (
        "ioctl-tiocsti",
        libc::SYS_ioctl,
        [-1, libc::TIOCSTI as libc::c_long, 0, 0, 0],
    ),
];

/// In the child: installs the filters of `role` and makes the call.
fn child<P: Part>(roles: &[P], call: &str, role: usize, log: bool) -> ! {
    let (_, nr, args) = FORBIDDEN
        .iter()
        .find(|(name, ..)| *name == call)
        .expect("a known call");
    let mode = if log { Mode::Log } else { Mode::Kill };
    seccomp::install(mode, roles[role]).expect("installing the filters");
    // SAFETY: every argument set above is inert: null pointers (which the
    // kernel rejects with EFAULT before touching memory), fd -1 (EBADF), or
    // flags without a pointer to follow. clone with CLONE_VM|CLONE_THREAD
    // passes an invalid stack (-1): if the filter let it through, the
    // kernel would refuse it (EINVAL) before using it.
    unsafe {
        libc::syscall(*nr, args[0], args[1], args[2], args[3], args[4]);
    }
    // Let through: exit_group is allowed.
    std::process::exit(3)
}

fn run(call: &str, role: usize, log: bool) -> std::process::ExitStatus {
    Command::new(std::env::current_exe().unwrap())
        .env("SECCOMP_CALL", call)
        .env("SECCOMP_ROLE", role.to_string())
        .env("SECCOMP_LOG", if log { "1" } else { "" })
        .stderr(Stdio::null())
        .status()
        .unwrap()
}

/// Checks `roles`' filters: each forbidden call kills (run in a child of
/// this test process), the log mode lets one through, and each forked
/// part's list (`narrowing`: child, parent) is shorter than its parent's.
pub fn check<P: Part>(roles: &[P], narrowing: &[(P, P)]) {
    if let Ok(call) = std::env::var("SECCOMP_CALL") {
        let role = std::env::var("SECCOMP_ROLE").unwrap().parse().unwrap();
        child(
            roles,
            &call,
            role,
            std::env::var("SECCOMP_LOG").unwrap() == "1",
        );
    }
    let mut checked = 0;
    for (role, name) in roles.iter().enumerate() {
        for (call, ..) in FORBIDDEN {
            let st = run(call, role, false);
            assert_eq!(
                st.signal(),
                Some(libc::SIGSYS),
                "{call} as {name:?}: {st:?}"
            );
            checked += 1;
        }
    }
    // The development switch logs instead of killing.
    let st = run("ptrace", 0, true);
    assert_eq!(st.code(), Some(3), "log mode: {st:?}");
    println!("seccomp: {checked} forbidden calls killed the process; log mode let one through");
    // A forked worker's list narrows its parent's.
    let n = |r: P| seccomp::allowed(r);
    for &(child, parent) in narrowing {
        assert!(
            n(child) < n(parent),
            "{child:?} {} < {parent:?} {}",
            n(child),
            n(parent)
        );
    }
    for &r in roles {
        println!("seccomp: {r:?} allows {} syscalls", n(r));
    }
}
