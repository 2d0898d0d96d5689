//! What all connections share: the policy in force, the worker pools, the
//! counters behind the limits, the time limits, and the stop signal.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use spacer_policy::Policy;
use tokio::sync::Notify;

use crate::peer::Names;
use crate::pool::Pool;
use crate::tenants::Tenants;
use crate::usage::Counters;
use crate::{audit, subids};

/// Time limits of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A new connection must send its first request within this.
    pub first_request: Duration,
    /// A client connection idle this long is closed (subspace connections
    /// hold a subspace and are never closed for idleness).
    pub idle: Duration,
    /// A response the client does not take within this is dropped and the
    /// connection closed.
    pub write: Duration,
}

/// What all connections share.
pub struct Ctx {
    /// The policy in force; a reload swaps it, each request reads it once.
    pub policy: RefCell<Rc<Policy>>,
    /// The serving workers that make rooms.
    pub pool: Rc<Pool>,
    /// The worker that starts every subspace worker.
    pub spawner: Rc<Pool>,
    /// The inode of the broker's own user namespace: the host's, where a
    /// root PID-only subspace makes its rooms.
    pub host_user_ns: u64,
    /// Limits' counters.
    pub counters: Counters,
    /// Whether the audit log is writable.
    pub audit: audit::Health,
    /// Connection time limits.
    pub timeouts: Timeouts,
    /// Subspace ids.
    pub next_subspace: Cell<u64>,
    /// Live subspaces in all.
    pub max_subspaces: u32,
    /// Where the subordinate id files are.
    pub subids: subids::Files,
    /// Whose subordinate ids are whose, for charging peers.
    pub tenants: Rc<Tenants>,
    /// Set on shutdown.
    pub stopping: Cell<bool>,
    /// Wakes connections on shutdown.
    pub stop: Notify,
    /// Woken each time a client connection closes.
    pub closed: Notify,
    /// Peers' user names, for the audit log.
    pub names: Names,
}

impl Ctx {
    /// A fresh subspace id.
    pub fn new_subspace_id(&self) -> u64 {
        let id = self.next_subspace.get();
        self.next_subspace.set(id + 1);
        id
    }
}
