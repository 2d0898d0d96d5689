//! Subordinate ids: the ranges `/etc/subuid` and `/etc/subgid` give a user,
//! checked as `newuidmap(1)` would and a little more, turned into the id maps
//! of a subspace (`map = "auto"`). The files are read at request time, so an
//! administrator's edit applies to the next request, as with `newuidmap`.

use std::fmt;
use std::path::{Path, PathBuf};

use spacer_proto::idmap::MAX_EXTENTS;
use spacer_proto::{Extent, IdMaps};

/// Ids below this are the host's system ids: never handed out.
pub const FIRST_SUBORDINATE_ID: u32 = 1000;

/// One line of a subordinate id file: `owner:start:count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// A user name or a uid in decimal.
    pub owner: String,
    /// First id.
    pub start: u32,
    /// How many.
    pub count: u32,
    /// Line number (from 1).
    pub line: usize,
}

impl Entry {
    fn end(&self) -> u64 {
        u64::from(self.start) + u64::from(self.count)
    }
    fn overlaps(&self, other: &Entry) -> bool {
        u64::from(self.start) < other.end() && u64::from(other.start) < self.end()
    }
}

/// Why no map could be made. The texts are the denial reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubidError {
    /// The file could not be read.
    Read(PathBuf, String),
    /// A line is not `owner:start:count`.
    Syntax(PathBuf, usize),
    /// Nothing for this user.
    NoEntry(PathBuf, String),
    /// A range of this user's reaches into the host's system ids.
    System(PathBuf, usize),
    /// A range of this user's overlaps another owner's.
    Overlap(PathBuf, usize, usize),
    /// A range of this user's holds the user's own id.
    Own(PathBuf, usize),
    /// More ranges than a map takes.
    TooMany(PathBuf),
}

impl fmt::Display for SubidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubidError::Read(p, e) => write!(f, "{}: {e}", p.display()),
            SubidError::Syntax(p, l) => {
                write!(
                    f,
                    "{}:{l}: not a line of the form owner:start:count",
                    p.display()
                )
            }
            SubidError::NoEntry(p, who) => {
                write!(f, "no subordinate ids for {who} in {}", p.display())
            }
            SubidError::System(p, l) => write!(
                f,
                "{}:{l}: the range reaches below {FIRST_SUBORDINATE_ID} (the host's system ids)",
                p.display()
            ),
            SubidError::Overlap(p, l, other) => write!(
                f,
                "{}:{l}: the range overlaps another owner's (line {other})",
                p.display()
            ),
            SubidError::Own(p, l) => {
                write!(f, "{}:{l}: the range holds the user's own id", p.display())
            }
            SubidError::TooMany(p) => write!(
                f,
                "{}: more than {} ranges for one user",
                p.display(),
                MAX_EXTENTS - 1
            ),
        }
    }
}

/// Parses a subordinate id file. Blank lines and `#` comments are skipped.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, SubidError> {
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || SubidError::Syntax(path.to_owned(), i + 1);
        let mut parts = line.split(':');
        let (Some(owner), Some(start), Some(count), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let number = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                s.parse::<u32>().ok()
            }
        };
        let (Some(start), Some(count)) = (number(start), number(count)) else {
            return Err(bad());
        };
        if owner.is_empty()
            || count == 0
            || u64::from(start) + u64::from(count) > u64::from(u32::MAX)
        {
            return Err(bad());
        }
        entries.push(Entry {
            owner: owner.to_owned(),
            start,
            count,
            line: i + 1,
        });
    }
    Ok(entries)
}

/// The ranges of the user `id` (named `name`, if it has a name), as
/// `newuidmap` matches them: by name or by the id in decimal. Each must
/// stay clear of the host's system ids, of the user's own id and of every
/// other owner's range.
pub fn ranges_of(
    path: &Path,
    entries: &[Entry],
    id: u32,
    name: Option<&str>,
) -> Result<Vec<(u32, u32)>, SubidError> {
    let id_text = id.to_string();
    let mine = |e: &Entry| e.owner == id_text || Some(e.owner.as_str()) == name;
    let (own, others): (Vec<&Entry>, Vec<&Entry>) = entries.iter().partition(|e| mine(e));
    if own.is_empty() {
        let who = match name {
            Some(n) => format!("{n} ({id})"),
            None => id_text,
        };
        return Err(SubidError::NoEntry(path.to_owned(), who));
    }
    if own.len() > MAX_EXTENTS - 1 {
        return Err(SubidError::TooMany(path.to_owned()));
    }
    for e in &own {
        if e.start < FIRST_SUBORDINATE_ID {
            return Err(SubidError::System(path.to_owned(), e.line));
        }
        if u64::from(e.start) <= u64::from(id) && u64::from(id) < e.end() {
            return Err(SubidError::Own(path.to_owned(), e.line));
        }
        if let Some(o) = others.iter().find(|o| e.overlaps(o)) {
            return Err(SubidError::Overlap(path.to_owned(), e.line, o.line));
        }
        // The same user listed twice over one range (by name and by uid):
        // as if another owner's.
        if let Some(o) = own.iter().find(|o| o.line != e.line && e.overlaps(o)) {
            return Err(SubidError::Overlap(path.to_owned(), e.line, o.line));
        }
    }
    Ok(own.iter().map(|e| (e.start, e.count)).collect())
}

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

    fn p() -> &'static Path {
        Path::new("/etc/subuid")
    }

    #[test]
    fn lines_are_owner_start_count() {
        let e = parse(p(), "# c\n\nalice:100000:65536\n1001:165536:10\n").unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].owner.as_str(), e[0].start, e[0].count, e[0].line),
            ("alice", 100_000, 65_536, 3)
        );
        for bad in [
            "alice:1",
            "alice:1:2:3",
            ":1:2",
            "a:-1:2",
            "a:+1:2",
            "a:1:0",
            "a:4294967295:1",
            "a:x:1",
            "a: 1:1",
        ] {
            assert_eq!(
                parse(p(), bad),
                Err(SubidError::Syntax(p().into(), 1)),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_user_gets_its_ranges_by_name_or_uid_and_nothing_that_touches_another() {
        let e = parse(
            p(),
            "alice:100000:65536\n1000:300000:5\nbob:165536:65536\nal:400000:1\n10000:500000:1\n",
        )
        .unwrap();
        assert_eq!(
            ranges_of(p(), &e, 1000, Some("alice")),
            Ok(vec![(100_000, 65_536), (300_000, 5)])
        );
        // Lookalikes never match: "al" is not "alice", 10000 is not 1000.
        assert_eq!(ranges_of(p(), &e, 1000, None), Ok(vec![(300_000, 5)]));
        assert!(matches!(
            ranges_of(p(), &e, 1002, Some("carol")),
            Err(SubidError::NoEntry(..))
        ));
        let overlap = parse(p(), "alice:100000:65536\nbob:165535:10\n").unwrap();
        assert_eq!(
            ranges_of(p(), &overlap, 1000, Some("alice")),
            Err(SubidError::Overlap(p().into(), 1, 2))
        );
        let system = parse(p(), "alice:0:65536\n").unwrap();
        assert_eq!(
            ranges_of(p(), &system, 1000, Some("alice")),
            Err(SubidError::System(p().into(), 1))
        );
        let own = parse(p(), "alice:999999:2\n").unwrap();
        assert_eq!(
            ranges_of(p(), &own, 1_000_000, Some("alice")),
            Err(SubidError::Own(p().into(), 1))
        );
        let twice = parse(p(), "alice:100000:10\n1000:100005:10\n").unwrap();
        assert!(matches!(
            ranges_of(p(), &twice, 1000, Some("alice")),
            Err(SubidError::Overlap(..))
        ));
    }

    #[test]
    fn the_map_puts_the_user_at_0_and_its_ranges_from_1() {
        let m = map_of(1000, &[(100_000, 65_536), (300_000, 5)]);
        assert_eq!(
            IdMaps::text(&m),
            "0 1000 1\n1 100000 65536\n65537 300000 5\n"
        );
    }
}
