//! The broker's privilege drop: one ordered sequence, from root to an
//! unprivileged user with no capability in any set, no_new_privs, and not
//! dumpable (other processes of the same uid must not ptrace it).

use caps::CapSet;
use nix::sys::prctl;
use nix::unistd::{getresgid, getresuid, setgroups, setresgid, setresuid, Gid, Uid, User};

/// The user to become.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

/// Why the drop failed; the broker does not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DropError {
    /// `--user` names no user.
    #[error("user {0:?} does not exist")]
    NoSuchUser(String),
    /// Neither `spacer` nor `nobody` exists.
    #[error("neither user \"spacer\" nor \"nobody\" exists; create one or pass --user")]
    NoDefaultUser,
    /// The target is root.
    #[error("--user must not be root")]
    Root,
    /// A step failed.
    #[error("{step} failed")]
    Step {
        /// Which.
        step: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The final check found something left.
    #[error("after dropping privileges: {0}")]
    Left(String),
}

fn step<T, E: std::fmt::Display>(step: &'static str, r: Result<T, E>) -> Result<T, DropError> {
    r.map_err(|e| DropError::Step {
        step,
        source: std::io::Error::other(e.to_string()),
    })
}

/// Resolves `--user`: the name given, else `spacer`, else `nobody`.
pub fn resolve(user: Option<&str>) -> Result<Target, DropError> {
    let found = |name: &str| User::from_name(name).ok().flatten();
    let u = match user {
        Some(name) => found(name).ok_or_else(|| DropError::NoSuchUser(name.to_owned()))?,
        None => found("spacer")
            .or_else(|| found("nobody"))
            .ok_or(DropError::NoDefaultUser)?,
    };
    if u.uid.is_root() {
        return Err(DropError::Root);
    }
    Ok(Target {
        name: u.name,
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    })
}

/// Drops to `t`, in order: bounding set (needs CAP_SETPCAP, so first),
/// ambient and inheritable sets, groups, gid, uid (which clears the
/// permitted and effective sets), no_new_privs, non-dumpable; then checks.
pub fn drop_to(t: &Target) -> Result<(), DropError> {
    for cap in caps::all() {
        if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            step(
                "dropping the bounding set",
                caps::drop(None, CapSet::Bounding, cap),
            )?;
        }
    }
    step(
        "clearing ambient capabilities",
        caps::clear(None, CapSet::Ambient),
    )?;
    step(
        "clearing inheritable capabilities",
        caps::clear(None, CapSet::Inheritable),
    )?;
    step(
        "keeping no capabilities across setuid",
        prctl::set_keepcaps(false),
    )?;
    let gid = Gid::from_raw(t.gid);
    step("setting supplementary groups", setgroups(&[gid]))?;
    step("setting gid", setresgid(gid, gid, gid))?;
    let uid = Uid::from_raw(t.uid);
    step("setting uid", setresuid(uid, uid, uid))?;
    step(
        "clearing permitted capabilities",
        caps::clear(None, CapSet::Permitted),
    )?;
    step("setting no_new_privs", prctl::set_no_new_privs())?;
    step("making the broker non-dumpable", prctl::set_dumpable(false))?;
    verify(t)
}

fn verify(t: &Target) -> Result<(), DropError> {
    let r = step("reading uids", getresuid())?;
    let g = step("reading gids", getresgid())?;
    if [r.real, r.effective, r.saved]
        .iter()
        .any(|u| u.as_raw() != t.uid)
        || [g.real, g.effective, g.saved]
            .iter()
            .any(|x| x.as_raw() != t.gid)
    {
        return Err(DropError::Left("ids did not change".into()));
    }
    for set in [
        CapSet::Effective,
        CapSet::Permitted,
        CapSet::Inheritable,
        CapSet::Ambient,
        CapSet::Bounding,
    ] {
        let left = step("reading capabilities", caps::read(None, set))?;
        if !left.is_empty() {
            return Err(DropError::Left(format!(
                "{set:?} capabilities remain: {left:?}"
            )));
        }
    }
    if !step("reading no_new_privs", prctl::get_no_new_privs())? {
        return Err(DropError::Left("no_new_privs is not set".into()));
    }
    Ok(())
}
