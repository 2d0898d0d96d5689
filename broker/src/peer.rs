//! Who is on the other end of a connection, as the kernel says: ids and
//! groups at connect, a pidfd of the connecting process, its name read
//! through that pidfd, and its user name, looked up off the event loop.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::tenants::Tenant;

/// A peer, as the kernel identified it when it connected.
#[derive(Debug)]
pub struct PeerInfo {
    /// uid
    pub uid: u32,
    /// gid
    pub gid: u32,
    /// supplementary groups
    pub groups: Vec<u32>,
    /// pid at connect time (informational)
    pub pid: i32,
    /// `SO_PEERPIDFD`: the connecting process itself, immune to pid reuse.
    pub pidfd: Option<OwnedFd>,
    /// The connecting process's name (`comm`) at accept, if it could be
    /// read and shown to be that process's (see [`comm_of`]).
    pub comm: Option<String>,
    /// The uid's user name, being looked up (`None` in unit tests).
    pub user: Option<Rc<UserName>>,
    /// The owner, if the peer's uid (or gid) is a subordinate id of
    /// someone's ([`crate::tenants`]): fixed at accept for the life of the
    /// connection and of the subspaces made through it.
    pub tenant: Option<Arc<Tenant>>,
}

impl PeerInfo {
    /// The uid every count of this peer is charged to: its tenant's, if it
    /// is a subordinate peer, else its own.
    pub fn account(&self) -> u32 {
        self.tenant.as_ref().map_or(self.uid, |t| t.uid)
    }

    /// Who the policy decides for: a subordinate peer is decided as its
    /// tenant (its rule, its caps, shared with all its ids), every other
    /// peer as itself.
    pub fn policy_peer(&self) -> spacer_policy::Peer<'_> {
        match &self.tenant {
            Some(t) => spacer_policy::Peer {
                uid: t.uid,
                gid: t.gid,
                groups: &t.groups,
            },
            None => spacer_policy::Peer {
                uid: self.uid,
                gid: self.gid,
                groups: &self.groups,
            },
        }
    }

    /// Whether the connecting process still runs. Without a pidfd (older
    /// kernels) this cannot be known and is assumed.
    pub fn alive(&self) -> bool {
        self.pidfd.as_ref().is_none_or(|p| pidfd_alive(p.as_fd()))
    }

    /// The uid's user name, waiting at most `bound` for its lookup.
    pub async fn user_name(&self, bound: Duration) -> Option<String> {
        match &self.user {
            Some(u) => u.wait(bound).await,
            None => None,
        }
    }
}

/// Whether a pidfd's process has not exited: a pidfd polls readable once
/// it has (zombies included).
pub fn pidfd_alive(pidfd: BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut pfd = [PollFd::new(pidfd, PollFlags::POLLIN)];
    matches!(poll(&mut pfd, PollTimeout::ZERO), Ok(0))
}

/// The longest `comm` the kernel keeps (`TASK_COMM_LEN` − 1), with room to
/// spare for a kernel that keeps more.
const COMM_MAX: usize = 64;

/// The name (`/proc/PID/comm`) of the process a pidfd refers to, or `None`
/// if it cannot be shown to be that process's. The pid is the pidfd's own
/// (its `fdinfo`, in the PID namespace of this `/proc`), never one the
/// caller passes; and the process must still be alive after the read: a
/// process that has not exited holds its pid, so the file read was its
/// own, not that of a later process given the same pid.
pub fn comm_of(pidfd: BorrowedFd<'_>) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()?;
    // -1: exited; 0: not in this /proc's PID namespace.
    if pid <= 0 {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
    if !pidfd_alive(pidfd) {
        return None;
    }
    let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
    Some(String::from_utf8_lossy(&raw[..raw.len().min(COMM_MAX)]).into_owned())
}

/// A uid's user name: looked up once on a blocking thread (a name service
/// may be slow, and never stalls the event loop), shared by the uid's
/// connections.
#[derive(Debug)]
pub struct UserName {
    state: RefCell<Lookup>,
    done: Notify,
    started: Instant,
}

#[derive(Debug, Clone)]
enum Lookup {
    Pending,
    Done(Option<String>),
}

impl UserName {
    /// The name, if the lookup is done and found one.
    pub fn known(&self) -> Option<String> {
        match &*self.state.borrow() {
            Lookup::Done(name) => name.clone(),
            Lookup::Pending => None,
        }
    }

    /// The name, waiting at most `bound` for the lookup; `None` for a uid
    /// without one or a lookup that did not finish in time.
    pub async fn wait(&self, bound: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            // Made before the state is read: the end of the lookup in
            // between still wakes it.
            let done = self.done.notified();
            if let Lookup::Done(name) = &*self.state.borrow() {
                return name.clone();
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return None;
            }
        }
    }

    fn stale(&self) -> bool {
        matches!(*self.state.borrow(), Lookup::Done(_)) && self.started.elapsed() > NAME_TTL
    }
}

/// How long a looked-up name is reused for new connections.
const NAME_TTL: Duration = Duration::from_secs(60);

/// The user names of the uids with open connections, one lookup per uid at
/// a time.
#[derive(Debug, Default)]
pub struct Names {
    by_uid: RefCell<HashMap<u32, Weak<UserName>>>,
}

impl Names {
    /// `uid`'s name: a lookup under way or recent, else a new one.
    pub fn of(&self, uid: u32) -> Rc<UserName> {
        let mut map = self.by_uid.borrow_mut();
        if let Some(name) = map.get(&uid).and_then(Weak::upgrade) {
            if !name.stale() {
                return name;
            }
        }
        // Forget the names no connection holds any more.
        map.retain(|_, w| w.strong_count() > 0);
        let name = Rc::new(UserName {
            state: RefCell::new(Lookup::Pending),
            done: Notify::new(),
            started: Instant::now(),
        });
        map.insert(uid, Rc::downgrade(&name));
        let pending = name.clone();
        tokio::task::spawn_local(async move {
            let found = tokio::task::spawn_blocking(move || {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .await
            .ok()
            .flatten();
            *pending.state.borrow_mut() = Lookup::Done(found);
            pending.done.notify_waiters();
        });
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    #[test]
    fn names_are_looked_up_once_per_uid_and_shared() {
        local(async {
            let names = Names::default();
            let a = names.of(0);
            let b = names.of(0);
            assert!(Rc::ptr_eq(&a, &b));
            assert_eq!(
                a.wait(Duration::from_secs(5)).await.as_deref(),
                Some("root")
            );
            // A uid without an entry has no name.
            let none = names.of(4_000_000_000);
            assert_eq!(none.wait(Duration::from_secs(5)).await, None);
        });
    }

    #[test]
    fn the_comm_of_a_live_process_is_read_through_its_pidfd() {
        let me = spacer_proto::fd::pidfd_open(std::process::id() as i32).unwrap();
        let want = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(comm_of(me.as_fd()).as_deref(), Some(want.trim_end()));
    }

    #[test]
    fn an_exited_process_has_no_comm() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pidfd = spacer_proto::fd::pidfd_open(child.id() as i32).unwrap();
        child.wait().unwrap();
        assert_eq!(comm_of(pidfd.as_fd()), None);
    }
}
