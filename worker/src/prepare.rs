//! Room options: the first steps inside a namespace the worker has just
//! made, before the namespace is handed out. The worker is inside the new
//! namespace (net, uts) or holds it as the namespace for its children
//! (time) while these run; nobody else can have entered it yet.
//!
//! Each step raises the one capability it needs from the permitted set and
//! lowers it right after: `CAP_NET_ADMIN` for `lo`, `CAP_SYS_TIME` for the
//! clock offsets. Host and domain names need `CAP_SYS_ADMIN`, which is
//! effective anyway.

use std::io::Write;
use std::os::fd::OwnedFd;

use caps::{CapSet, Capability};
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::prctl;
use nix::sys::stat::Mode;
use nix::time::{clock_gettime, ClockId};
use spacer_proto::{NsType, Offset, RoomOptions};

use crate::maker::errno_text;
use crate::sys;

/// What the worker's own clock must allow before a time namespace is made:
/// the kernel refuses offsets that would take the clock below zero or past
/// its limit, and the request is refused before anything is created.
pub fn check_clocks(options: &RoomOptions) -> Result<(), String> {
    for (what, clock, offset) in [
        (
            "monotonic",
            ClockId::CLOCK_MONOTONIC,
            options.monotonic_offset,
        ),
        ("boottime", ClockId::CLOCK_BOOTTIME, options.boottime_offset),
    ] {
        if let Some(o) = offset {
            let now = clock_gettime(clock)
                .map_err(|e| format!("reading the {what} clock: {}", errno_text(e)))?;
            let now = Offset {
                secs: now.tv_sec(),
                nanos: now.tv_nsec() as u32,
            };
            o.applies_to(now)
                .map_err(|why| format!("invalid {what} offset: {why}"))?;
        }
    }
    Ok(())
}

/// Applies the options that concern a new namespace of type `t`.
pub fn apply(t: NsType, options: &RoomOptions) -> Result<(), String> {
    match t {
        NsType::Net if options.loopback_up => with_cap(Capability::CAP_NET_ADMIN, || {
            sys::loopback_up().map_err(|e| format!("bringing lo up: {e}"))
        })?,
        NsType::Uts => {
            if let Some(name) = &options.hostname {
                nix::unistd::sethostname(name)
                    .map_err(|e| format!("setting the host name: {}", errno_text(e)))?;
            }
            if let Some(name) = &options.domainname {
                sys::set_domainname(name).map_err(|e| format!("setting the domain name: {e}"))?;
            }
            Ok(())
        }
        NsType::Time => offsets(options),
        _ => Ok(()),
    }
}

/// Writes the offsets of the time namespace this process's children would
/// get (the one `unshare(CLONE_NEWTIME)` just made) to
/// `/proc/self/timens_offsets`. The kernel checks `CAP_SYS_TIME` of the
/// *opener*, so it is raised for the `open`.
fn offsets(options: &RoomOptions) -> Result<(), String> {
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
    let fd = with_cap(Capability::CAP_SYS_TIME, open_offsets)?
        .map_err(|e| format!("opening /proc/self/timens_offsets: {}", errno_text(e)))?;
    std::fs::File::from(fd)
        .write_all(lines.as_bytes())
        .map_err(|e| format!("setting the clock offsets: {e}"))
}

/// Opens `/proc/self/timens_offsets` for writing. A worker that is not
/// root on the host (a subspace worker) owns its `/proc/self` files only
/// while it is dumpable, so on `EACCES` it is, for the `open` alone.
fn open_offsets() -> Result<OwnedFd, Errno> {
    let path = "/proc/self/timens_offsets";
    let flags = OFlag::O_WRONLY | OFlag::O_CLOEXEC;
    match open(path, flags, Mode::empty()) {
        Err(Errno::EACCES) => {
            prctl::set_dumpable(true)?;
            let fd = open(path, flags, Mode::empty());
            // Failing to be non-dumpable again is fatal: the worker must not
            // serve on in that state.
            if prctl::set_dumpable(false).is_err() {
                eprintln!("spacer-worker: cannot become non-dumpable again; exiting");
                std::process::exit(1);
            }
            fd
        }
        other => other,
    }
}

/// Runs `f` with `cap` in the effective set (raised from the permitted set
/// unless it is effective already), and lowers it again after. If it
/// cannot be lowered the worker exits: it must not serve on with more
/// privilege than it had.
fn with_cap<T>(cap: Capability, f: impl FnOnce() -> T) -> Result<T, String> {
    let was = caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    if !was && !caps::has_cap(None, CapSet::Permitted, cap).unwrap_or(false) {
        return Err(format!(
            "the worker does not hold {cap} (it was not in the service's capability \
             bounding set, or the caller of a private worker lacks it)"
        ));
    }
    if !was {
        caps::raise(None, CapSet::Effective, cap).map_err(|e| format!("raising {cap}: {e}"))?;
    }
    let out = f();
    if !was && caps::drop(None, CapSet::Effective, cap).is_err() {
        eprintln!("spacer-worker: cannot lower {cap}; exiting");
        std::process::exit(1);
    }
    Ok(out)
}
