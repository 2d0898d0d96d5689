//! Helpers for the shapes tests have: run a closure inside rooms on a
//! throw-away thread, or start a `Command` inside a subspace and rooms.

use std::os::fd::{AsFd, OwnedFd};

use nix::sched::{setns, unshare, CloneFlags};
use spacer_proto::NsType;

use crate::{Error, Rooms, Subspace};

fn flag(t: NsType) -> CloneFlags {
    CloneFlags::from_bits_retain(t.flag().bits() as i32)
}

/// Runs `f` on a new thread that has joined the given rooms (cgroup, ipc,
/// mnt, net, uts) and returns its value. The thread ends afterwards, so
/// nothing leaks into your other threads; your process may be
/// multi-threaded. Joining a mount namespace first gives the thread its
/// own filesystem context (`unshare(CLONE_FS)`).
///
/// Joining rooms owned by the host's user namespace needs `CAP_SYS_ADMIN`.
/// A thread of a multi-threaded process can join neither a user namespace
/// nor a time namespace (the kernel allows that only to single-threaded
/// processes), so rooms made inside a subspace, and time rooms, are for
/// [`CommandExt::join`].
///
/// ```
/// use spacer_client::{run_in, Client, Error, NsType, Spaces};
///
/// let spacer = Client::private()?;
/// if nix::unistd::geteuid().is_root() {
///     let rooms = spacer.rooms(Spaces::NET | Spaces::UTS)?;
///     let ifaces = run_in(&rooms, || std::fs::read_to_string("/proc/thread-self/net/dev"))?
///         .expect("readable");
///     assert_eq!(ifaces.lines().count(), 3, "a new network namespace has only lo");
/// } else {
///     // Unprivileged, rooms are made inside a user namespace of your own,
///     // which a thread cannot enter: they are for `CommandExt::join`.
///     let (inside, _sub) = spacer.subspace(Spaces::USER)?;
///     let rooms = inside.rooms(Spaces::NET)?;
///     let refused = run_in(&rooms, || ());
///     assert!(matches!(refused, Err(Error::Join { ns: NsType::Net, .. })), "{refused:?}");
/// }
/// # Ok::<(), spacer_client::Error>(())
/// ```
pub fn run_in<T: Send>(rooms: &Rooms, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    if rooms.time.is_some() {
        return Err(Error::Join {
            ns: NsType::Time,
            source: std::io::Error::from_raw_os_error(libc::EUSERS),
        });
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            if rooms.mnt.is_some() {
                unshare(CloneFlags::CLONE_FS).map_err(|e| Error::Join {
                    ns: NsType::Mnt,
                    source: e.into(),
                })?;
            }
            for t in [
                NsType::Cgroup,
                NsType::Ipc,
                NsType::Net,
                NsType::Uts,
                NsType::Mnt,
            ] {
                if let Some(fd) = rooms.get(t) {
                    setns(fd, flag(t)).map_err(|e| Error::Join {
                        ns: t,
                        source: e.into(),
                    })?;
                }
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// What a child process joins before it runs its program, in this order:
/// the user namespace, the rooms, then the PID namespace. Rooms joined
/// together with a subspace's user namespace must have been made through
/// that subspace's client (entering the user namespace gives up the
/// privileges the host's namespaces would need).
///
/// The namespaces are duplicated into the `Join` (and the command that
/// gets it), so the originals may be dropped.
#[derive(Debug, Default)]
pub struct Join {
    fds: Vec<(NsType, OwnedFd)>,
    pid: Option<OwnedFd>,
}

impl Join {
    /// Nothing yet.
    pub fn new() -> Join {
        Join::default()
    }

    /// A subspace's user namespace (first, so that its capabilities allow
    /// the rest) and its PID namespace (last).
    pub fn subspace(mut self, sub: &Subspace) -> Result<Join, Error> {
        if let Some(u) = &sub.user {
            self.fds.insert(0, (NsType::User, dup(u)?));
        }
        if let Some(p) = &sub.pid {
            self.pid = Some(dup(p)?);
        }
        Ok(self)
    }

    /// Rooms (every type present).
    pub fn rooms(mut self, rooms: &Rooms) -> Result<Join, Error> {
        for t in [
            NsType::Cgroup,
            NsType::Ipc,
            NsType::Net,
            NsType::Uts,
            NsType::Time,
            NsType::Mnt,
        ] {
            if let Some(fd) = rooms.get(t) {
                self.fds.push((t, dup(fd)?));
            }
        }
        Ok(self)
    }
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, Error> {
    fd.as_fd().try_clone_to_owned().map_err(Error::Io)
}

/// Starting a `std::process::Command` inside namespaces.
pub trait CommandExt {
    /// The child joins `join`'s namespaces before it executes its program.
    ///
    /// With a PID namespace the program becomes its PID 1, as with
    /// `unshare --fork --pid`: the child forks once more after joining; the
    /// process you get as `Child` waits for the program and exits with its
    /// status (and the program dies if that process is killed). Any process
    /// may do this, multi-threaded or not: the joining happens in the new
    /// child, which is single-threaded.
    ///
    /// ```
    /// use std::process::Command;
    /// use spacer_client::{Client, CommandExt, Join, Spaces};
    ///
    /// // A user namespace of your own: no privilege needed (where the kernel
    /// // allows unprivileged user namespaces).
    /// let spacer = Client::private()?;
    /// let (_inside, sub) = spacer.subspace(Spaces::USER | Spaces::PID)?;
    /// let out = Command::new("sh")
    ///     .args(["-c", "echo $$; id -u"])
    ///     .join(Join::new().subspace(&sub)?)
    ///     .output()
    ///     .expect("sh runs");
    /// assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n0\n");
    /// # Ok::<(), spacer_client::Error>(())
    /// ```
    fn join(&mut self, join: Join) -> &mut Self;

    /// The child mounts a new `/proc` before it executes its program (for a
    /// child that is PID 1 of a new PID namespace, in a mount namespace of
    /// its own: `/proc` then shows that PID namespace, as with `unshare
    /// --mount-proc`).
    fn mount_proc(&mut self) -> &mut Self;

    /// The child is killed (`SIGKILL`) when the process that spawned it
    /// ends, even if that happens before the child has started: a command
    /// that must never outlive its starter (`spacer run`).
    fn die_with_parent(&mut self) -> Result<&mut Self, Error>;
}

impl CommandExt for std::process::Command {
    fn join(&mut self, join: Join) -> &mut Self {
        crate::sys::join_before_exec(self, join.fds, join.pid);
        self
    }

    fn mount_proc(&mut self) -> &mut Self {
        crate::sys::mount_proc_before_exec(self);
        self
    }

    fn die_with_parent(&mut self) -> Result<&mut Self, Error> {
        let me = spacer_proto::fd::pidfd_open(std::process::id() as i32).map_err(Error::Io)?;
        crate::sys::die_with_parent(self, me);
        Ok(self)
    }
}
