//! A subspace's id maps: which ids its user namespace maps (the request's
//! `map` key), and the exact lines the worker writes, checked again by the
//! worker whatever the broker sent.

use serde::{Deserialize, Serialize};

/// Which ids a new user namespace maps (the `map` key of a `subspace`
/// request; absent means [`MapChoice::Root`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapChoice {
    /// The requester's uid and gid as 0 inside (`0 <uid> 1`).
    #[default]
    Root,
    /// The requester's uid and gid as themselves inside (`<uid> <uid> 1`):
    /// `unshare --map-current-user`.
    Current,
    /// The requester's uid and gid as 0, and from 1 on the ranges
    /// `/etc/subuid` and `/etc/subgid` give the requester (if the policy
    /// grants `subids`): `unshare --map-auto`.
    Auto,
}

impl MapChoice {
    /// The name on the wire and in the audit log.
    pub fn name(self) -> &'static str {
        match self {
            MapChoice::Root => "root",
            MapChoice::Current => "current",
            MapChoice::Auto => "auto",
        }
    }

    /// By name.
    pub fn from_name(s: &str) -> Option<MapChoice> {
        [MapChoice::Root, MapChoice::Current, MapChoice::Auto]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

/// One line of an id map: `count` ids from `inside` map to `count` ids
/// from `outside` (in the parent user namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// First id inside.
    pub inside: u32,
    /// First id outside.
    pub outside: u32,
    /// How many.
    pub count: u32,
}

impl Extent {
    fn end_inside(&self) -> u64 {
        u64::from(self.inside) + u64::from(self.count)
    }
    fn end_outside(&self) -> u64 {
        u64::from(self.outside) + u64::from(self.count)
    }
}

/// The most lines in one map (the kernel takes 340; a tenant needs few).
pub const MAX_EXTENTS: usize = 16;

/// A user namespace's uid and gid maps. The first line of each maps the
/// requester's own id; any further lines are subordinate ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMaps {
    /// uid map lines.
    pub uid: Vec<Extent>,
    /// gid map lines.
    pub gid: Vec<Extent>,
}

impl IdMaps {
    /// The requester's uid and gid as `inside_uid`/`inside_gid`, nothing else.
    pub fn single(inside_uid: u32, uid: u32, inside_gid: u32, gid: u32) -> IdMaps {
        let one = |inside, outside| Extent {
            inside,
            outside,
            count: 1,
        };
        IdMaps {
            uid: vec![one(inside_uid, uid)],
            gid: vec![one(inside_gid, gid)],
        }
    }

    /// Whether the maps name subordinate ids: then a process with
    /// `CAP_SETUID`/`CAP_SETGID` in the parent namespace must write them,
    /// and `setgroups` stays `allow` (as `newgidmap` leaves it); a single
    /// line each is written by the new namespace's own process after
    /// `setgroups` `deny`.
    pub fn has_subordinate_ids(&self) -> bool {
        self.uid.len() > 1 || self.gid.len() > 1
    }

    /// The worker's own check, whatever the broker said: the first line of
    /// each map is the requester's id (`uid`, `gid`) and one id only; the
    /// lines are at most [`MAX_EXTENTS`], none empty or past the id space,
    /// they overlap neither inside nor outside, and no line beside the
    /// first names id 0 of the parent namespace.
    pub fn check(&self, uid: u32, gid: u32) -> Result<(), &'static str> {
        check_map(&self.uid, uid).map_err(|e| match e {
            MapError::First => "the uid map does not start with the requester's uid",
            MapError::Lines => "the uid map has too many or empty lines",
            MapError::Overlap => "the uid map's lines overlap",
            MapError::Zero => "the uid map names uid 0 of the host",
        })?;
        check_map(&self.gid, gid).map_err(|e| match e {
            MapError::First => "the gid map does not start with the requester's gid",
            MapError::Lines => "the gid map has too many or empty lines",
            MapError::Overlap => "the gid map's lines overlap",
            MapError::Zero => "the gid map names gid 0 of the host",
        })
    }

    /// A map as `/proc/PID/uid_map` takes it, all lines in one write.
    pub fn text(lines: &[Extent]) -> String {
        lines
            .iter()
            .map(|e| format!("{} {} {}\n", e.inside, e.outside, e.count))
            .collect()
    }

    /// The maps for the audit log: `"0 1000 1,1 100000 65536"` per map.
    pub fn summary(lines: &[Extent]) -> String {
        lines
            .iter()
            .map(|e| format!("{} {} {}", e.inside, e.outside, e.count))
            .collect::<Vec<_>>()
            .join(",")
    }
}

enum MapError {
    First,
    Lines,
    Overlap,
    Zero,
}

fn check_map(lines: &[Extent], own: u32) -> Result<(), MapError> {
    let first = lines.first().ok_or(MapError::Lines)?;
    if first.outside != own || first.count != 1 {
        return Err(MapError::First);
    }
    if lines.len() > MAX_EXTENTS {
        return Err(MapError::Lines);
    }
    // Ids up to 2^32 - 2: (u32)-1 is the kernel's "no id".
    let top = u64::from(u32::MAX);
    for e in lines {
        if e.count == 0 || e.end_inside() > top || e.end_outside() > top {
            return Err(MapError::Lines);
        }
    }
    for (i, a) in lines.iter().enumerate() {
        for b in &lines[i + 1..] {
            let inside =
                u64::from(a.inside) < b.end_inside() && u64::from(b.inside) < a.end_inside();
            let outside =
                u64::from(a.outside) < b.end_outside() && u64::from(b.outside) < a.end_outside();
            if inside || outside {
                return Err(MapError::Overlap);
            }
        }
    }
    if lines[1..].iter().any(|e| e.outside == 0) {
        return Err(MapError::Zero);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(inside: u32, outside: u32, count: u32) -> Extent {
        Extent {
            inside,
            outside,
            count,
        }
    }

    #[test]
    fn the_worker_takes_only_maps_that_start_with_the_requester_and_stay_apart() {
        let ok = IdMaps {
            uid: vec![e(0, 1000, 1), e(1, 100_000, 65_536)],
            gid: vec![e(0, 1000, 1), e(1, 100_000, 65_536)],
        };
        assert_eq!(ok.check(1000, 1000), Ok(()));
        assert!(ok.has_subordinate_ids());
        assert!(ok.check(1001, 1000).is_err());
        let mut bad = ok.clone();
        bad.uid.push(e(70_000, 0, 1));
        assert_eq!(
            bad.check(1000, 1000),
            Err("the uid map names uid 0 of the host")
        );
        let mut bad = ok.clone();
        bad.gid.push(e(70_000, 100_100, 5));
        assert_eq!(bad.check(1000, 1000), Err("the gid map's lines overlap"));
        let mut bad = ok.clone();
        bad.uid[1].inside = 0;
        assert_eq!(bad.check(1000, 1000), Err("the uid map's lines overlap"));
        let mut bad = ok.clone();
        bad.uid[1].count = u32::MAX;
        assert!(bad.check(1000, 1000).is_err());
        let mut bad = ok.clone();
        bad.uid[0].count = 2;
        assert!(bad.check(1000, 1000).is_err());
        let many = IdMaps {
            uid: (0..=MAX_EXTENTS as u32)
                .map(|i| e(i * 10, 100_000 + i * 10, 1))
                .collect(),
            gid: vec![e(0, 1000, 1)],
        };
        let mut many = many;
        many.uid[0] = e(0, 1000, 1);
        assert!(many.check(1000, 1000).is_err());
        let single = IdMaps::single(1000, 1000, 1000, 1000);
        assert_eq!(single.check(1000, 1000), Ok(()));
        assert!(!single.has_subordinate_ids());
        assert_eq!(IdMaps::text(&ok.uid), "0 1000 1\n1 100000 65536\n");
        assert_eq!(IdMaps::summary(&ok.uid), "0 1000 1,1 100000 65536");
    }

    #[test]
    fn choices_by_name() {
        for m in [MapChoice::Root, MapChoice::Current, MapChoice::Auto] {
            assert_eq!(MapChoice::from_name(m.name()), Some(m));
        }
        assert_eq!(MapChoice::from_name("Auto"), None);
    }
}
