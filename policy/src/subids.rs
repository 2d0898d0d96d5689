//! Subordinate id files (`/etc/subuid`, `/etc/subgid`): parsed and checked
//! as `newuidmap(1)` would and a little more. Pure text work, shared by the
//! broker (id maps of `map = "auto"` subspaces, and the tenant a
//! subordinate peer is charged to) and `spacer policy explain`.

use std::fmt;
use std::path::{Path, PathBuf};

use spacer_proto::idmap::MAX_EXTENTS;

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

/// The entry whose range holds `id`, as the broker charges a peer with that
/// uid (or gid) to the entry's owner: the first such line of the file
/// whose range stays clear of the host's system ids. Lines that are not of
/// the form `owner:start:count` are skipped here (they are refused where a
/// map is made); overlapping ranges of two owners give `id` to the first.
/// Ids below [`FIRST_SUBORDINATE_ID`] are never a tenant's.
pub fn owner_entry(entries: &[Entry], id: u32) -> Option<&Entry> {
    if id < FIRST_SUBORDINATE_ID {
        return None;
    }
    entries.iter().find(|e| {
        e.start >= FIRST_SUBORDINATE_ID
            && u64::from(e.start) <= u64::from(id)
            && u64::from(id) < e.end()
    })
}

/// The well-formed lines of a subordinate id file, bad ones skipped (for
/// [`owner_entry`]: one typo must not make every subordinate peer a
/// stranger with caps of its own).
pub fn parse_lenient(text: &str) -> Vec<Entry> {
    let path = Path::new("");
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let mut e = parse(path, l).ok()?.pop()?;
            e.line = i + 1;
            Some(e)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/etc/subuid")
    }

    #[test]
    fn a_peer_in_a_range_belongs_to_the_first_line_that_holds_it() {
        let e = parse_lenient(
            "alice:100000:65536\nnot a line\nbob:165535:10\nroot:0:2000\ncarol:1000:5\n",
        );
        assert_eq!(e.len(), 4);
        let owner = |id| owner_entry(&e, id).map(|e| (e.owner.as_str(), e.line));
        assert_eq!(owner(100_000), Some(("alice", 1)));
        assert_eq!(owner(165_535), Some(("alice", 1)));
        assert_eq!(owner(165_536), Some(("bob", 3)));
        assert_eq!(owner(99_999), None);
        // System ids are nobody's, whatever a line says.
        assert_eq!(owner(0), None);
        assert_eq!(owner(999), None);
        assert_eq!(owner(1000), Some(("carol", 5)));
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
}
