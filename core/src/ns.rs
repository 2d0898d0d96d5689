//! Namespace types and the `spaces` bit mask of requests.

use std::fmt;

bitflags::bitflags! {
    /// A set of namespace types, as the `CLONE_NEW*` bits of `unshare(2)`.
    ///
    /// This is the `spaces` field of every request. [`Spaces::ROOMS`] is what a
    /// `Rooms` request may ask for, [`Spaces::SUBSPACE`] what a `Subspace`
    /// request may ask for.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct Spaces: u64 {
        /// `CLONE_NEWCGROUP`
        const CGROUP = libc::CLONE_NEWCGROUP as u64;
        /// `CLONE_NEWIPC`
        const IPC = libc::CLONE_NEWIPC as u64;
        /// `CLONE_NEWNS` (mount)
        const MNT = libc::CLONE_NEWNS as u64;
        /// `CLONE_NEWNET`
        const NET = libc::CLONE_NEWNET as u64;
        /// `CLONE_NEWTIME`
        const TIME = libc::CLONE_NEWTIME as u64;
        /// `CLONE_NEWUTS`
        const UTS = libc::CLONE_NEWUTS as u64;
        /// `CLONE_NEWUSER`
        const USER = libc::CLONE_NEWUSER as u64;
        /// `CLONE_NEWPID`
        const PID = libc::CLONE_NEWPID as u64;
    }
}

impl Spaces {
    /// The types a `Rooms` request may create.
    pub const ROOMS: Spaces = Spaces::CGROUP
        .union(Spaces::IPC)
        .union(Spaces::MNT)
        .union(Spaces::NET)
        .union(Spaces::TIME)
        .union(Spaces::UTS);
    /// The types a `Subspace` request may create.
    pub const SUBSPACE: Spaces = Spaces::USER.union(Spaces::PID);

    /// The namespace types in this set, in [`NsType::ALL`] order.
    pub fn types(self) -> impl Iterator<Item = NsType> {
        NsType::ALL
            .into_iter()
            .filter(move |t| self.contains(t.flag()))
    }

    /// The set holding exactly the given types.
    pub fn of(types: impl IntoIterator<Item = NsType>) -> Spaces {
        types
            .into_iter()
            .fold(Spaces::empty(), |acc, t| acc | t.flag())
    }

    /// Names of the types in this set, e.g. `["net", "uts"]`.
    pub fn names(self) -> Vec<&'static str> {
        self.types().map(NsType::name).collect()
    }
}

impl fmt::Display for Spaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, t) in self.types().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(t.name())?;
        }
        Ok(())
    }
}

/// Why a `spaces` mask is not acceptable for a request. The `Display` texts
/// are the stable reasons of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpaceError {
    /// The mask has no bit of the request's set.
    #[error("no space requested")]
    NoSpace,
    /// The mask has a bit outside the request's set.
    #[error("out of space")]
    OutOfSpace,
}

/// Checks a raw `spaces` mask against the set a request may ask for: any bit
/// outside `valid` is "out of space", no bit at all is "no space requested".
pub fn check_spaces(bits: u64, valid: Spaces) -> Result<Spaces, SpaceError> {
    if bits & !valid.bits() != 0 {
        return Err(SpaceError::OutOfSpace);
    }
    if bits == 0 {
        return Err(SpaceError::NoSpace);
    }
    Ok(Spaces::from_bits_truncate(bits))
}

/// One namespace type.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum NsType {
    /// cgroup namespace
    Cgroup,
    /// IPC namespace
    Ipc,
    /// mount namespace
    Mnt,
    /// network namespace
    Net,
    /// time namespace
    Time,
    /// UTS (host and domain name) namespace
    Uts,
    /// user namespace
    User,
    /// PID namespace
    Pid,
}

impl NsType {
    /// Every type, in the order used on the wire and in listings.
    pub const ALL: [NsType; 8] = [
        NsType::Cgroup,
        NsType::Ipc,
        NsType::Mnt,
        NsType::Net,
        NsType::Time,
        NsType::Uts,
        NsType::User,
        NsType::Pid,
    ];

    /// The name used in policies, logs and on the wire (as in `/proc/PID/ns/`).
    pub const fn name(self) -> &'static str {
        match self {
            NsType::Cgroup => "cgroup",
            NsType::Ipc => "ipc",
            NsType::Mnt => "mnt",
            NsType::Net => "net",
            NsType::Time => "time",
            NsType::Uts => "uts",
            NsType::User => "user",
            NsType::Pid => "pid",
        }
    }

    /// The type with this name, if any. Exact match only.
    pub fn from_name(name: &str) -> Option<NsType> {
        NsType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The `CLONE_NEW*` flag of this type.
    pub const fn flag(self) -> Spaces {
        match self {
            NsType::Cgroup => Spaces::CGROUP,
            NsType::Ipc => Spaces::IPC,
            NsType::Mnt => Spaces::MNT,
            NsType::Net => Spaces::NET,
            NsType::Time => Spaces::TIME,
            NsType::Uts => Spaces::UTS,
            NsType::User => Spaces::USER,
            NsType::Pid => Spaces::PID,
        }
    }

    /// The type whose `CLONE_NEW*` flag `NS_GET_NSTYPE` returned.
    pub fn from_clone_flag(flag: i64) -> Option<NsType> {
        NsType::ALL
            .into_iter()
            .find(|t| t.flag().bits() as i64 == flag)
    }

    /// The entry in `/proc/PID/ns/` that names the namespace a *new* process
    /// would get: `pid_for_children` and `time_for_children` for the two types
    /// whose `unshare(2)` affects only children.
    pub const fn proc_for_children(self) -> &'static str {
        match self {
            NsType::Pid => "pid_for_children",
            NsType::Time => "time_for_children",
            other => other.name(),
        }
    }
}

impl fmt::Display for NsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_exact() {
        for t in NsType::ALL {
            assert_eq!(NsType::from_name(t.name()), Some(t));
            assert_eq!(NsType::from_clone_flag(t.flag().bits() as i64), Some(t));
        }
        assert_eq!(NsType::from_name("ne"), None);
        assert_eq!(NsType::from_name("nets"), None);
        assert_eq!(NsType::from_name("NET"), None);
    }

    #[test]
    fn spaces_checks_match_the_protocol_reasons() {
        assert_eq!(check_spaces(0, Spaces::ROOMS), Err(SpaceError::NoSpace));
        assert_eq!(
            check_spaces(Spaces::USER.bits(), Spaces::ROOMS),
            Err(SpaceError::OutOfSpace)
        );
        assert_eq!(
            check_spaces(
                libc::CLONE_THREAD as u64 | Spaces::NET.bits(),
                Spaces::ROOMS
            ),
            Err(SpaceError::OutOfSpace)
        );
        assert_eq!(
            check_spaces(1 << 63, Spaces::ROOMS),
            Err(SpaceError::OutOfSpace)
        );
        assert_eq!(
            check_spaces(Spaces::NET.bits(), Spaces::SUBSPACE),
            Err(SpaceError::OutOfSpace)
        );
        assert_eq!(
            check_spaces(Spaces::ROOMS.bits(), Spaces::ROOMS),
            Ok(Spaces::ROOMS)
        );
        assert_eq!(SpaceError::NoSpace.to_string(), "no space requested");
        assert_eq!(SpaceError::OutOfSpace.to_string(), "out of space");
    }

    #[test]
    fn display_lists_names() {
        assert_eq!((Spaces::NET | Spaces::UTS).to_string(), "net,uts");
        assert_eq!(Spaces::empty().to_string(), "none");
        assert_eq!(Spaces::ROOMS.types().count(), 6);
    }
}
