//! The client's one piece of `unsafe`: the hook that joins namespaces in a
//! child between `fork` and `exec`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use spacer_proto::NsType;

/// Installs a `pre_exec` hook on `cmd` that joins `fds` in order, then the
/// PID namespace `pid` (forking once more so the program is its PID 1).
/// The hook owns the fds (they close when `cmd` is dropped).
pub fn join_before_exec(cmd: &mut Command, fds: Vec<(NsType, OwnedFd)>, pid: Option<OwnedFd>) {
    let hook = move || -> io::Result<()> {
        for (t, fd) in &fds {
            // SAFETY: setns takes an fd (kept open by `fds`, which this
            // closure owns) and an integer; it is async-signal-safe.
            if unsafe { libc::setns(fd.as_raw_fd(), t.flag().bits() as libc::c_int) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(p) = &pid {
            // SAFETY: as above.
            if unsafe { libc::setns(p.as_raw_fd(), libc::CLONE_NEWPID) } < 0 {
                return Err(io::Error::last_os_error());
            }
            fork_into_pid1()?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it calls setns, clone (raw),
    // prctl, waitpid and _exit, and neither allocates nor takes locks (the
    // fds were collected before).
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Installs a `pre_exec` hook that mounts a new procfs on `/proc`
/// (`nosuid,nodev,noexec`).
pub fn mount_proc_before_exec(cmd: &mut Command) {
    let hook = || -> io::Result<()> {
        // SAFETY: every pointer is a NUL-terminated literal or null; mount
        // is a system call, async-signal-safe.
        let r = unsafe {
            libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and calls mount only.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// A close-on-exec duplicate of fd `n`, which this process inherited (the
/// original stays open, owned by nobody: it is the process's for its whole
/// life), if it is an `AF_UNIX` `SOCK_SEQPACKET` socket.
pub fn dup_inherited(n: std::os::fd::RawFd) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    if n < 3 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_DUPFD_CLOEXEC reads the fd table only; it fails with EBADF
    // when `n` is not open.
    let new = unsafe { libc::fcntl(n, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl returned a new fd that nothing else in this process
    // knows about.
    let fd = unsafe { OwnedFd::from_raw_fd(new) };
    if !spacer_proto::fd::is_unix_seqpacket(fd.as_fd()) {
        return Err(io::Error::from_raw_os_error(libc::ENOTSOCK));
    }
    Ok(fd)
}

/// Installs a `pre_exec` hook that arms `PR_SET_PDEATHSIG(SIGKILL)` in the
/// child, then leaves at once if `parent` (a pidfd of the spawning
/// process, owned by the hook) has already exited. The child starts with
/// no signal blocked (the parent may block the ones it takes with
/// `sigwait`).
pub fn die_with_parent(cmd: &mut Command, parent: OwnedFd) {
    let hook = move || -> io::Result<()> {
        // SAFETY: an all-zero sigset_t is a valid (empty) value.
        let mut none: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigemptyset writes the sigset_t on this stack; it is
        // async-signal-safe.
        unsafe { libc::sigemptyset(&mut none) };
        // SAFETY: sigprocmask reads that sigset_t; a null old-set pointer is
        // allowed; it is async-signal-safe.
        if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: prctl takes integers only; async-signal-safe.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut p = libc::pollfd {
            fd: parent.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes one pollfd through a pointer to a
        // live local; the fd is kept open by the closure.
        if unsafe { libc::poll(&mut p, 1, 0) } != 0 {
            // SAFETY: _exit leaves at once, running nothing of the parent's.
            unsafe { libc::_exit(1) };
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and calls only prctl,
    // poll and _exit, which are async-signal-safe; it neither allocates
    // nor takes locks.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// In the child of `Command::spawn`, after `setns(CLONE_NEWPID)`: forks;
/// the new process (PID 1 of the namespace) returns to exec the program;
/// this one waits for it and exits with its status.
fn fork_into_pid1() -> io::Result<()> {
    // A pidfd for this process, so the program can tell whether it is
    // already gone when the parent-death signal is armed (getppid() says 0
    // in the new PID namespace, where the parent is not visible).
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    // SAFETY: pidfd_open takes integers and returns a new fd or -1.
    let me = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if me < 0 {
        return Err(io::Error::last_os_error());
    }
    let me = me as libc::c_int;
    // SAFETY: a raw clone with fork semantics (no CLONE_VM, null stack) in a
    // process that has one thread (a child between fork and exec).
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // The program: dies if its waiting parent is killed, including
        // before the signal was armed.
        let mut p = libc::pollfd {
            fd: me,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: prctl takes integers only.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        // SAFETY: poll reads and writes one pollfd through a pointer to a
        // live local.
        if unsafe { libc::poll(&mut p, 1, 0) } != 0 {
            // SAFETY: _exit leaves at once, running nothing of the parent's.
            unsafe { libc::_exit(1) };
        }
        // SAFETY: `me` is our own copy of the pidfd, used no more.
        unsafe { libc::close(me) };
        return Ok(());
    }
    // Only waiting from here: drop every inherited fd, among them std's
    // pipe that tells `spawn()` when the program has been executed, so that
    // `spawn()` returns then and not when the program exits.
    // SAFETY: close_range takes integers; nothing in this process uses the
    // fds again (it only waits and exits).
    unsafe { libc::close_range(3, libc::c_uint::MAX, 0) };
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes one int through a pointer to a live local.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    };
    // SAFETY: _exit ends this process without running anything of the
    // parent's (atexit handlers, destructors) in the forked child.
    unsafe { libc::_exit(code) }
}
