//! Room options: the first steps inside a namespace the worker has just
//! made, before the namespace is handed out. The worker is inside the new
//! namespace (net, uts) or holds it as the namespace for its children
//! (time) while these run; nobody else can have entered it yet.
//!
//! Each step raises the one capability it needs from the permitted set and
//! lowers it right after: `CAP_NET_ADMIN` for `lo`, `CAP_SYS_TIME` for the
//! clock offsets. Host and domain names need `CAP_SYS_ADMIN`, which is
//! effective anyway.

use std::fs::File;
use std::io::Write;

use caps::Capability;
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use nix::time::{clock_gettime, ClockId};
use spacer_proto::{NsType, Offset, RoomOptions};

use crate::privilege::with_cap;
use crate::sys::{self, Ctx, Error};

/// What the worker's own clock must allow before a time namespace is made:
/// the kernel refuses offsets that would take the clock below zero or past
/// its limit, and the request is refused before anything is created.
pub fn check_clocks(options: &RoomOptions) -> Result<(), Error> {
    for (what, clock, offset) in [
        (
            "monotonic",
            ClockId::CLOCK_MONOTONIC,
            options.monotonic_offset,
        ),
        ("boottime", ClockId::CLOCK_BOOTTIME, options.boottime_offset),
    ] {
        if let Some(o) = offset {
            let now = clock_gettime(clock).ctx(&format!("reading the {what} clock"))?;
            let now = Offset {
                secs: now.tv_sec(),
                nanos: now.tv_nsec() as u32,
            };
            o.applies_to(now)
                .map_err(|why| Error::msg(format!("invalid {what} offset: {why}")))?;
        }
    }
    Ok(())
}

/// Applies the options that concern a new namespace of type `t`.
/// `offsets_file` is a subspace worker's [`open_offsets_file`].
pub fn apply(t: NsType, options: &RoomOptions, offsets_file: Option<&File>) -> Result<(), Error> {
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
        NsType::Time => offsets(options, offsets_file),
        _ => Ok(()),
    }
}

/// For a subspace worker, during its setup: opens its
/// `/proc/self/timens_offsets`, kept for the life of the process (in its
/// [`Maker`](crate::maker::Maker)). Once it serves, it is the requester
/// without being dumpable, and its `/proc/self` files are not its own: it
/// could not open the file then without becoming dumpable (and traceable by
/// the requester). The kernel checks `CAP_SYS_TIME` against the credentials
/// the file was opened with, and the file sets offsets of this process's
/// own next time namespace only.
pub fn open_offsets_file() -> Result<File, Errno> {
    open(
        "/proc/self/timens_offsets",
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
}

/// [`open_offsets_file`] through `proc`, an fd of the worker's own `/proc`
/// (a process that has joined a requester's mount namespace does not
/// trust what paths mean there).
pub fn open_offsets_file_at(proc: std::os::fd::BorrowedFd<'_>) -> Result<File, Errno> {
    nix::fcntl::openat(
        proc,
        "self/timens_offsets",
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
}

/// Writes the offsets of the time namespace this process's children would
/// get (the one `unshare(CLONE_NEWTIME)` just made) to
/// `/proc/self/timens_offsets`: through the file opened during a subspace
/// worker's setup, or else (a worker that is root on the host) opened now
/// with `CAP_SYS_TIME` raised, since the kernel checks the *opener*.
fn offsets(options: &RoomOptions, preopened: Option<&File>) -> Result<(), Error> {
    let lines: String = [
        (libc::CLOCK_MONOTONIC, options.monotonic_offset),
        (libc::CLOCK_BOOTTIME, options.boottime_offset),
    ]
    .into_iter()
    .filter_map(|(id, o)| o.map(|o| format!("{id} {} {}\n", o.secs, o.nanos)))
    .collect();
    if lines.is_empty() {
        return Ok(());
    }
    // The kernel takes each write at offset 0 and does not move the file
    // position, so the preopened file serves every request.
    let written = match preopened {
        Some(mut file) => file.write_all(lines.as_bytes()),
        None => with_cap(Capability::CAP_SYS_TIME, open_offsets_file)?
            .ctx("opening /proc/self/timens_offsets")?
            .write_all(lines.as_bytes()),
    };
    written.ctx("setting the clock offsets")
}
