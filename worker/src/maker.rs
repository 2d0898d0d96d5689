//! Rooms: one new namespace per requested type, prepared as the room
//! options ask while nobody else can have entered it, handed out as an fd,
//! with the worker back in its own namespaces before it answers. See
//! docs/ARCHITECTURE.md, "One request" and "Room options".

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use caps::Capability;
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::time::{clock_gettime, ClockId};
use spacer_core::fd::{self, Which};
use spacer_core::{NsType, Offset, RoomOptions, Spaces};

use crate::privilege::{taint, with_cap};
use crate::sys::{self, Ctx, Error};

/// Makes rooms and keeps the process's own namespaces what they were.
pub struct Maker {
    me: OwnedFd,
    /// Where to return after making a room of each type: `None` until a
    /// private one is made (the process cannot return to a namespace an
    /// ancestor user namespace owns).
    homes: [Option<OwnedFd>; 6],
    offsets: Offsets,
}

/// Where a worker writes the clock offsets of the time rooms it makes.
pub enum Offsets {
    /// Its `/proc/self/timens_offsets`, opened during a subspace's setup.
    Opened(File),
    /// Opened for each request with `CAP_SYS_TIME` (room, private worker).
    OnRequest,
    /// Opening it during setup failed: offsets are refused.
    Missing,
}

impl Maker {
    /// Records the process's current namespaces that its own user namespace
    /// owns as its homes.
    pub fn new(offsets: Offsets) -> Result<Maker, Error> {
        let record = || -> io::Result<Maker> {
            let me = fd::pidfd_open(std::process::id() as i32)?;
            let own_user = fd::namespace_inode(current(&me, NsType::User)?.as_fd())?;
            let mut homes: [Option<OwnedFd>; 6] = Default::default();
            for (slot, t) in homes.iter_mut().zip(Spaces::ROOMS.types()) {
                let ns = current(&me, t)?;
                match fd::owning_user_namespace(ns.as_fd()) {
                    Ok(owner) if fd::namespace_inode(owner.as_fd())? == own_user => {
                        *slot = Some(ns)
                    }
                    // EPERM: the owner is an ancestor the kernel does not show.
                    Err(e) if e.raw_os_error() != Some(libc::EPERM) => return Err(e),
                    _ => {}
                }
            }
            Ok(Maker { me, homes, offsets })
        };
        record().ctx("recording own namespaces")
    }

    /// One new namespace for each type in `spaces` (checked by the caller,
    /// with the options); mount and UTS ones copies of the `requester`'s
    /// (a pidfd; the caller holds `CAP_SYS_PTRACE`). All or nothing.
    pub fn rooms(
        &mut self,
        spaces: Spaces,
        options: &RoomOptions,
        requester: Option<BorrowedFd<'_>>,
    ) -> Result<Vec<(NsType, OwnedFd)>, Error> {
        let mut made = Vec::with_capacity(spaces.bits().count_ones() as usize);
        for t in spaces.types() {
            let flag = CloneFlags::from_bits_retain(t.flag().bits() as libc::c_int);
            self.ensure_home(t, flag)?;
            let from = requester.filter(|_| matches!(t, NsType::Mnt | NsType::Uts));
            if let Some(pidfd) = from {
                // Nothing is opened by path while in there.
                let entered = setns(pidfd, flag);
                entered.ctx(&format!("entering the requesting process's {t} namespace"))?;
            }
            let new = match unshare(flag) {
                Ok(()) => self.finish_new(t, options),
                // Still home: an unprivileged private worker may not even
                // join its own namespaces again.
                Err(e) if from.is_none() => return Err(create_error(t, e)),
                Err(e) => Err(create_error(t, e)),
            };
            // Back home whatever happened, before looking at the result.
            self.go_home(t, flag)?;
            made.push((t, new?));
        }
        Ok(made)
    }

    /// In a namespace just made: make it ready and take an fd for it.
    fn finish_new(&self, t: NsType, options: &RoomOptions) -> Result<OwnedFd, Error> {
        if t == NsType::Mnt {
            make_root_private()?;
        }
        apply(t, options, &self.offsets)
            .map_err(|e| Error::msg(format!("preparing the new {t} namespace: {e}")))?;
        current(&self.me, t).ctx(&format!("opening the new {t} namespace"))
    }

    /// Back to the home of type `t`; a process that cannot return taints
    /// itself (its own namespaces may now be wrong).
    fn go_home(&self, t: NsType, flag: CloneFlags) -> Result<(), Error> {
        let home = self.homes[index(t)]
            .as_ref()
            .expect("ensure_home ran first");
        let back = setns(home, flag).ctx(&format!("returning to the worker's own {t} namespace"));
        if let Err(e) = &back {
            taint(&e.to_string());
        }
        back
    }

    /// Makes a private home of type `t` if there is none yet.
    fn ensure_home(&mut self, t: NsType, flag: CloneFlags) -> Result<(), Error> {
        if self.homes[index(t)].is_none() {
            unshare(flag).map_err(|e| create_error(t, e))?;
            if t == NsType::Mnt {
                make_root_private()?;
            }
            let home = current(&self.me, t).ctx(&format!("opening the new {t} namespace"))?;
            self.homes[index(t)] = Some(home);
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

fn create_error(t: NsType, e: Errno) -> Error {
    Error::os(format!("creating {t} namespace"), e)
}

/// `mount --make-rprivate /`: nothing propagates out of or into it.
fn make_root_private() -> Result<(), Error> {
    mount::<str, str, str, str>(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)
        .ctx("making / private in the new mount namespace")
}

/// The namespace of type `t` a new child of this process would get (for
/// time, `time_for_children`): by pidfd ioctl (Linux 6.11), else `/proc`.
fn current(me: &OwnedFd, t: NsType) -> io::Result<OwnedFd> {
    match fd::pidfd_namespace(me.as_fd(), t, Which::ForChildren) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
            File::open(format!("/proc/thread-self/ns/{}", t.proc_for_children())).map(Into::into)
        }
        other => other,
    }
}

/// Refuses, before anything is made, offsets that would take the worker's
/// own clocks below zero or past the kernel's limit.
pub fn check_clocks(options: &RoomOptions) -> Result<(), Error> {
    for (name, id, offset) in options.clock_offsets() {
        let now = clock_gettime(ClockId::from_raw(id)).ctx(&format!("reading the {name} clock"))?;
        let now = Offset {
            secs: now.tv_sec(),
            nanos: now.tv_nsec() as u32,
        };
        offset
            .applies_to(now)
            .map_err(|why| Error::msg(format!("invalid {name} offset: {why}")))?;
    }
    Ok(())
}

/// Applies the options that concern a new namespace of type `t`, raising
/// the one capability each needs.
fn apply(t: NsType, options: &RoomOptions, offsets: &Offsets) -> Result<(), Error> {
    match t {
        NsType::Net if options.loopback_up => with_cap(Capability::CAP_NET_ADMIN, || {
            sys::loopback_up().ctx("bringing lo up")
        })?,
        NsType::Uts => {
            if let Some(name) = &options.hostname {
                nix::unistd::sethostname(name).ctx("setting the host name")?;
            }
            if let Some(name) = &options.domainname {
                sys::set_domainname(name).ctx("setting the domain name")?;
            }
            Ok(())
        }
        NsType::Time => write_offsets(options, offsets),
        _ => Ok(()),
    }
}

/// Opens `/proc/self/timens_offsets` through `proc`, an fd of the worker's
/// own `/proc`.
pub fn open_offsets_file_at(proc: BorrowedFd<'_>) -> Result<File, Errno> {
    let flags = OFlag::O_WRONLY | OFlag::O_CLOEXEC;
    openat(proc, "self/timens_offsets", flags, Mode::empty()).map(File::from)
}

/// Writes the offsets of the time namespace `unshare(CLONE_NEWTIME)` just
/// made for this process's children (the kernel checks `CAP_SYS_TIME` of
/// the opener and takes each write at offset 0).
fn write_offsets(options: &RoomOptions, file: &Offsets) -> Result<(), Error> {
    let lines: String = options
        .clock_offsets()
        .map(|(_, id, o)| format!("{id} {} {}\n", o.secs, o.nanos))
        .collect();
    if lines.is_empty() {
        return Ok(());
    }
    let open = || {
        let flags = OFlag::O_WRONLY | OFlag::O_CLOEXEC;
        nix::fcntl::open("/proc/self/timens_offsets", flags, Mode::empty()).map(File::from)
    };
    let written = match file {
        Offsets::Opened(file) => (&*file).write_all(lines.as_bytes()),
        Offsets::OnRequest => with_cap(Capability::CAP_SYS_TIME, open)?
            .ctx("opening /proc/self/timens_offsets")?
            .write_all(lines.as_bytes()),
        Offsets::Missing => {
            let why = "this subspace could not open its clock offsets file when it was set up";
            return Err(Error::msg(why));
        }
    };
    written.ctx("setting the clock offsets")
}
