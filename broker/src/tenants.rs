//! Whose a subordinate id is: a peer whose uid (or, failing that, gid) lies
//! in a range `/etc/subuid` (`/etc/subgid`) gives some owner *is* that
//! owner's for the broker — decided as the owner and charged to the owner
//! (see docs/ARCHITECTURE.md, "Subordinate peers"). Otherwise a tenant with
//! 65,536 subordinate uids would have 65,536 sets of caps.
//!
//! The files are read into an index at start and again when they change
//! (looked at no more than once a second, from accept); the reading and
//! the owners' name, group and account lookups run on a blocking thread,
//! never on the event loop. A connection keeps the owner it was given at
//! accept until it closes, whatever the files say later, so an edit never
//! moves a charge between accounts.

use std::cell::{Cell, RefCell};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spacer_policy::subids::{parse_lenient, Entry, FIRST_SUBORDINATE_ID};

use crate::subids::Files;

/// The owner of a subordinate peer, as the broker decides and charges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The owner's uid.
    pub uid: u32,
    /// Its user name, if it has one.
    pub name: Option<String>,
    /// Its primary gid (its account's; else the overflow gid).
    pub gid: u32,
    /// Its supplementary groups, as a login would have them.
    pub groups: Vec<u32>,
}

/// One range of a file and the tenant it belongs to.
#[derive(Debug)]
struct Range {
    start: u32,
    count: u32,
    tenant: Arc<Tenant>,
}

/// Both files' ranges, in file order.
#[derive(Debug, Default)]
pub struct Index {
    uids: Vec<Range>,
    gids: Vec<Range>,
}

impl Index {
    /// Reads both files and looks their owners up (blocking).
    pub fn read(files: &Files) -> Index {
        Index {
            uids: ranges(&files.subuid),
            gids: ranges(&files.subgid),
        }
    }

    /// The tenant of a peer with these ids, if it is a subordinate one: by
    /// its uid, else by its gid. A uid that is its owner's own is never
    /// subordinate.
    pub fn tenant_of(&self, uid: u32, gid: u32) -> Option<Arc<Tenant>> {
        // In file order: of two owners' overlapping ranges, the first line
        // wins, as `spacer_policy::subids::owner_entry` says.
        let find = |ranges: &[Range], id: u32| {
            if id < FIRST_SUBORDINATE_ID {
                return None;
            }
            ranges
                .iter()
                .find(|r| r.start <= id && u64::from(id) < u64::from(r.start) + u64::from(r.count))
                .map(|r| r.tenant.clone())
        };
        find(&self.uids, uid)
            .or_else(|| find(&self.gids, gid))
            .filter(|t| t.uid != uid)
    }
}

/// A file's ranges that hold subordinate ids, with their owners; an
/// unreadable file has none.
fn ranges(path: &Path) -> Vec<Range> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let entries = parse_lenient(&text);
    let mut owners: Vec<(String, Option<Arc<Tenant>>)> = Vec::new();
    let mut out = Vec::new();
    for e in &entries {
        // System ids are never a tenant's (as `owner_entry` says).
        if e.start < FIRST_SUBORDINATE_ID {
            continue;
        }
        let tenant = match owners.iter().find(|(o, _)| *o == e.owner) {
            Some((_, t)) => t.clone(),
            None => {
                let t = lookup(e).map(Arc::new);
                owners.push((e.owner.clone(), t.clone()));
                t
            }
        };
        if let Some(tenant) = tenant {
            out.push(Range {
                start: e.start,
                count: e.count,
                tenant,
            });
        }
    }
    out
}

/// The owner of an entry: its account by name, or the uid it names in
/// decimal (with or without an account). A name no account has owns
/// nothing anyone can be charged to.
fn lookup(e: &Entry) -> Option<Tenant> {
    use nix::unistd::{getgrouplist, Gid, Uid, User};
    let by_number = e
        .owner
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| e.owner.parse::<u32>().ok())
        .flatten();
    let account = match by_number {
        Some(uid) => User::from_uid(Uid::from_raw(uid)).ok().flatten(),
        None => User::from_name(&e.owner).ok().flatten(),
    };
    let uid = by_number.or(account.as_ref().map(|a| a.uid.as_raw()))?;
    let (gid, groups) = match &account {
        Some(a) => {
            let groups = std::ffi::CString::new(a.name.as_str())
                .ok()
                .and_then(|n| getgrouplist(&n, a.gid).ok())
                .unwrap_or_default();
            (
                a.gid.as_raw(),
                groups.into_iter().map(Gid::as_raw).collect(),
            )
        }
        None => (spacer_policy::overflow_uid(), Vec::new()),
    };
    Some(Tenant {
        uid,
        name: account.map(|a| a.name),
        gid,
        groups,
    })
}

/// What identifies a file's version: device, inode, size, mtime, ctime.
type FileKey = Option<(u64, u64, u64, i64, i64, i64)>;

fn key_of(path: &Path) -> FileKey {
    std::fs::metadata(path).ok().map(|m| {
        (
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime_nsec() + m.mtime() * 1_000_000_000,
            m.ctime(),
            m.ctime_nsec(),
        )
    })
}

/// How often accept looks whether the files changed.
const RECHECK: Duration = Duration::from_secs(1);

/// The index in force, and when the files were last looked at.
#[derive(Debug)]
pub struct Tenants {
    files: Files,
    index: RefCell<Rc<Index>>,
    keys: RefCell<(FileKey, FileKey)>,
    checked: Cell<Instant>,
    reading: Cell<bool>,
}

impl Tenants {
    /// Reads the files now (at start, before any peer is served).
    pub fn new(files: Files) -> Tenants {
        let keys = (key_of(&files.subuid), key_of(&files.subgid));
        let index = Index::read(&files);
        Tenants {
            files,
            index: RefCell::new(Rc::new(index)),
            keys: RefCell::new(keys),
            checked: Cell::new(Instant::now()),
            reading: Cell::new(false),
        }
    }

    /// The tenant of a peer with these ids, by the index in force; starts
    /// a new reading off the event loop if the files changed (used from
    /// the next accept on once it is done).
    pub fn tenant_of(self: &Rc<Self>, uid: u32, gid: u32) -> Option<Arc<Tenant>> {
        self.recheck();
        self.index.borrow().tenant_of(uid, gid)
    }

    fn recheck(self: &Rc<Self>) {
        if self.reading.get() || self.checked.get().elapsed() < RECHECK {
            return;
        }
        self.checked.set(Instant::now());
        let keys = (key_of(&self.files.subuid), key_of(&self.files.subgid));
        if keys == *self.keys.borrow() {
            return;
        }
        self.reading.set(true);
        let me = self.clone();
        tokio::task::spawn_local(async move {
            let files = me.files.clone();
            if let Ok(index) = tokio::task::spawn_blocking(move || Index::read(&files)).await {
                *me.index.borrow_mut() = Rc::new(index);
                *me.keys.borrow_mut() = keys;
                tracing::info!(target: "spacer::event", event = "subids_reread", subuid = %me.files.subuid.display(), subgid = %me.files.subgid.display(), "subordinate id files read again: new connections are charged by them");
            }
            me.reading.set(false);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files in a directory of their own, removed on drop.
    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn files(subuid: &str, subgid: &str) -> (Dir, Files) {
        let dir = std::env::temp_dir().join(format!("spacer-tenants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = Files {
            subuid: dir.join("subuid"),
            subgid: dir.join("subgid"),
        };
        std::fs::write(&f.subuid, subuid).unwrap();
        std::fs::write(&f.subgid, subgid).unwrap();
        (Dir(dir), f)
    }

    #[test]
    fn subordinate_peers_belong_to_their_owner_by_uid_then_by_gid() {
        // "0" is root by number; 4000000 has no account.
        let (_d, f) = files(
            "root:900:200\n0:100000:65536\n4000000:300000:10\nno-such-user-here:400000:10\n",
            "4000000:500000:10\n",
        );
        let ix = Index::read(&f);
        let root = ix.tenant_of(100_005, 100_005).unwrap();
        assert_eq!(
            (root.uid, root.name.as_deref(), root.gid),
            (0, Some("root"), 0)
        );
        let t = ix.tenant_of(300_003, 7).unwrap();
        assert_eq!((t.uid, t.name.as_deref()), (4_000_000, None));
        assert_eq!(t.gid, spacer_policy::overflow_uid());
        // By gid when the uid is nobody's.
        assert_eq!(ix.tenant_of(7, 500_001).unwrap().uid, 4_000_000);
        // An owner without an account owns nothing; ids outside every range
        // are nobody's.
        assert_eq!(ix.tenant_of(400_001, 400_001), None);
        assert_eq!(ix.tenant_of(1000, 1000), None);
        // Nor are system ids, whatever a line says.
        assert_eq!(ix.tenant_of(950, 950), None);
        // A missing file has no ranges.
        let ix = Index::read(&Files {
            subuid: "/nonexistent/subuid".into(),
            subgid: "/nonexistent/subgid".into(),
        });
        assert_eq!(ix.tenant_of(100_005, 100_005), None);
    }
}
