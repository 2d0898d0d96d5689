//! Creating rooms: one new namespace per requested type, handed out as an
//! fd, with the worker back in its own namespaces before it answers.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use spacer_proto::fd::{self, Which};
use spacer_proto::{NsType, RoomOptions, Spaces};

use crate::sys::{Ctx, Error};

/// Where the worker returns to after making a room of one type.
enum Home {
    /// A namespace this process may `setns(2)` back into.
    Ready(OwnedFd),
    /// The namespace the process started in is owned by an ancestor user
    /// namespace (a subspace worker), so it cannot go back there; a private
    /// home is made the first time a room of this type is asked for.
    NotYet,
}

/// Makes rooms and keeps the process's own namespaces what they were.
pub struct Maker {
    me: OwnedFd,
    homes: [Home; 6],
    /// A subspace worker's `/proc/self/timens_offsets`, opened during its
    /// setup ([`crate::prepare::open_offsets_file`]).
    offsets_file: Option<std::fs::File>,
}

/// Why a room could not be made (nothing is handed out), and whether the
/// worker's own namespaces may now be wrong: then it must not serve any
/// further request.
#[derive(Debug)]
pub struct RoomError {
    /// What failed.
    pub error: Error,
    /// The worker could not return to its own namespace.
    pub fatal: bool,
}

impl From<Error> for RoomError {
    fn from(error: Error) -> RoomError {
        RoomError {
            error,
            fatal: false,
        }
    }
}

impl Maker {
    /// Records the process's current namespaces as its homes: those owned by
    /// its own user namespace can be returned to; the others get a private
    /// home on first use. `offsets_file`: a subspace worker's time offsets
    /// file, opened during its setup.
    pub fn new(offsets_file: Option<std::fs::File>) -> Result<Maker, Error> {
        Maker::record(offsets_file).ctx("recording own namespaces")
    }

    fn record(offsets_file: Option<std::fs::File>) -> io::Result<Maker> {
        let me = fd::pidfd_open(std::process::id() as i32)?;
        let own_user = current(&me, NsType::User)?;
        let own_user_ino = fd::namespace_inode(own_user.as_fd())?;
        let mut homes: [Home; 6] = std::array::from_fn(|_| Home::NotYet);
        for (slot, t) in homes.iter_mut().zip(Spaces::ROOMS.types()) {
            let ns = current(&me, t)?;
            match fd::owning_user_namespace(ns.as_fd()) {
                Ok(owner) if fd::namespace_inode(owner.as_fd())? == own_user_ino => {
                    *slot = Home::Ready(ns);
                }
                Ok(_) => {}
                // The owner is an ancestor of our user namespace, which the
                // kernel does not show us: not a namespace we can return to.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Maker {
            me,
            homes,
            offsets_file,
        })
    }

    /// One new namespace for each type in `spaces` (room types only; the
    /// caller has checked them and the options), each prepared as
    /// `options` ask. New mount and UTS namespaces are copies of the
    /// requesting process's (`requester`, a pidfd) when given, else of the
    /// worker's. All or nothing: on error every fd made so far is closed.
    pub fn rooms(
        &mut self,
        spaces: Spaces,
        options: &RoomOptions,
        requester: Option<BorrowedFd<'_>>,
    ) -> Result<Vec<(NsType, OwnedFd)>, RoomError> {
        let mut made = Vec::with_capacity(spaces.bits().count_ones() as usize);
        for t in spaces.types() {
            self.ensure_home(t)?;
            let from = requester.filter(|_| matches!(t, NsType::Mnt | NsType::Uts));
            if let Some(pidfd) = from {
                // The copy is made from there. Nothing is opened by path
                // while in it (the requester may control what paths mean).
                // (The caller holds CAP_SYS_PTRACE effective for this.)
                setns(pidfd, clone_flag(t))
                    .ctx(&format!("entering the requesting process's {t} namespace"))?;
            }
            if let Err(e) = unshare(clone_flag(t)) {
                if from.is_some() {
                    self.go_home(t)?;
                }
                return Err(create_error(t, e).into());
            }
            let fd = self.finish_new(t, options);
            // Back home before looking at the result: whatever happened, the
            // process must not stay in the new namespace.
            self.go_home(t)?;
            made.push((t, fd?));
        }
        Ok(made)
    }

    /// In a namespace just made: make it ready and take an fd for it.
    fn finish_new(&self, t: NsType, options: &RoomOptions) -> Result<OwnedFd, RoomError> {
        if t == NsType::Mnt {
            make_root_private()?;
        }
        crate::prepare::apply(t, options, self.offsets_file.as_ref())
            .map_err(|e| Error::msg(format!("preparing the new {t} namespace: {e}")))?;
        Ok(current(&self.me, t).ctx(&format!("opening the new {t} namespace"))?)
    }

    fn go_home(&self, t: NsType) -> Result<(), RoomError> {
        match &self.homes[index(t)] {
            Home::Ready(home) => setns(home, clone_flag(t))
                .ctx(&format!("returning to the worker's own {t} namespace"))
                .map_err(|error| RoomError { error, fatal: true }),
            Home::NotYet => unreachable!("ensure_home ran first"),
        }
    }

    /// Makes a private home of type `t` if the process cannot return to the
    /// namespace it started in.
    fn ensure_home(&mut self, t: NsType) -> Result<(), RoomError> {
        if let Home::NotYet = self.homes[index(t)] {
            unshare(clone_flag(t)).map_err(|e| create_error(t, e))?;
            if t == NsType::Mnt {
                make_root_private()?;
            }
            let home = current(&self.me, t).ctx(&format!("opening the new {t} namespace"))?;
            self.homes[index(t)] = Home::Ready(home);
        }
        Ok(())
    }
}

fn index(t: NsType) -> usize {
    Spaces::ROOMS
        .types()
        .position(|x| x == t)
        .expect("a room type")
}

/// The `CloneFlags` of a type.
pub fn clone_flag(t: NsType) -> CloneFlags {
    CloneFlags::from_bits_retain(t.flag().bits() as libc::c_int)
}

fn create_error(t: NsType, e: Errno) -> Error {
    Error::os(format!("creating {t} namespace"), e)
}

/// `mount --make-rprivate /`: nothing done in the new mount namespace
/// propagates anywhere, and nothing propagates into it.
fn make_root_private() -> Result<(), Error> {
    mount::<str, str, str, str>(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)
        .ctx("making / private in the new mount namespace")
}

/// The namespace of type `t` a new child of this process would get: for
/// time that is `time_for_children`, which `unshare(CLONE_NEWTIME)` changes.
/// By pidfd ioctl where the kernel has it (6.11), else by `/proc`.
pub fn current(me: &OwnedFd, t: NsType) -> io::Result<OwnedFd> {
    match fd::pidfd_namespace(me.as_fd(), t, Which::ForChildren) {
        Ok(ns) => Ok(ns),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL)) => {
            let path = format!("/proc/thread-self/ns/{}", t.proc_for_children());
            File::open(path).map(OwnedFd::from)
        }
        Err(e) => Err(e),
    }
}
