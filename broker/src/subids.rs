//! Subordinate ids: the ranges `/etc/subuid` and `/etc/subgid` give a user,
//! checked as `newuidmap(1)` would and a little more, turned into the id maps
//! of a subspace (`map = "auto"`). The files are read at request time, so an
//! administrator's edit applies to the next request, as with `newuidmap`.

use std::path::{Path, PathBuf};

use spacer_proto::{Extent, IdMaps};

pub use spacer_policy::subids::{parse, ranges_of, Entry, SubidError};

/// One map: the user's own id as 0, then its ranges from 1 on.
fn map_of(own: u32, ranges: &[(u32, u32)]) -> Vec<Extent> {
    let mut lines = vec![Extent {
        inside: 0,
        outside: own,
        count: 1,
    }];
    let mut next: u32 = 1;
    for &(start, count) in ranges {
        lines.push(Extent {
            inside: next,
            outside: start,
            count,
        });
        next = next.saturating_add(count);
    }
    lines
}

/// Where the files are.
#[derive(Debug, Clone)]
pub struct Files {
    /// `/etc/subuid` unless told otherwise.
    pub subuid: PathBuf,
    /// `/etc/subgid` unless told otherwise.
    pub subgid: PathBuf,
}

/// The maps of a `map = "auto"` subspace for `uid`/`gid`: reads both files
/// and looks the user's and the group's names up (blocking: call it off the
/// event loop). Each map must fit the id space inside, and the result passes
/// the worker's own check.
pub fn auto_maps(files: &Files, uid: u32, gid: u32) -> Result<IdMaps, SubidError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| SubidError::Read(p.to_owned(), e.to_string()))
    };
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name);
    let uids = parse(&files.subuid, &read(&files.subuid)?)?;
    let gids = parse(&files.subgid, &read(&files.subgid)?)?;
    // newgidmap matches /etc/subgid by the *user's* name (or uid), too.
    let uid_ranges = ranges_of(&files.subuid, &uids, uid, user.as_deref())?;
    let gid_ranges = ranges_of(&files.subgid, &gids, uid, user.as_deref())
        .and_then(|r| check_own_gid(&files.subgid, &gids, gid, group.as_deref(), r))?;
    let maps = IdMaps {
        uid: map_of(uid, &uid_ranges),
        gid: map_of(gid, &gid_ranges),
    };
    maps.check(uid, gid)
        .map_err(|e| SubidError::Read(files.subuid.clone(), e.to_owned()))?;
    Ok(maps)
}

/// The gid ranges must not hold the requester's own gid either.
fn check_own_gid(
    path: &Path,
    entries: &[Entry],
    gid: u32,
    _group: Option<&str>,
    ranges: Vec<(u32, u32)>,
) -> Result<Vec<(u32, u32)>, SubidError> {
    for &(start, count) in &ranges {
        if u64::from(start) <= u64::from(gid)
            && u64::from(gid) < u64::from(start) + u64::from(count)
        {
            let line = entries
                .iter()
                .find(|e| e.start == start && e.count == count)
                .map_or(0, |e| e.line);
            return Err(SubidError::Own(path.to_owned(), line));
        }
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_puts_the_user_at_0_and_its_ranges_from_1() {
        let m = map_of(1000, &[(100_000, 65_536), (300_000, 5)]);
        assert_eq!(
            IdMaps::text(&m),
            "0 1000 1\n1 100000 65536\n65537 300000 5\n"
        );
    }
}
