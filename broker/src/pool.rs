//! The serving workers: started through the supervisor, fed many requests
//! at once (each tagged with an id), replaced when they die or hang, with
//! back-off and a breaker against crash loops.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use spacer_proto::internal::{
    InternalError, SupervisorReply, SupervisorRequest, Trust, WorkerKind, WorkerReply,
    WorkerRequest,
};
use spacer_proto::{Channel, MessageError};
use tokio::sync::{oneshot, Notify};

use crate::achan::AsyncChannel;
use crate::subspace::Unserved;

/// A reply with its fds, checked against what it says, and for a subspace
/// worker the spawner started, the guard that ends it unless served.
pub type Reply = (WorkerReply, Vec<OwnedFd>, Option<Unserved>);

/// Why a call did not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No worker is running (restarting, or the breaker is open).
    #[error("service unavailable: {0}")]
    Unavailable(&'static str),
    /// The worker died with the request in flight.
    #[error("the worker ended during the request")]
    Died,
    /// The worker did not answer in time and is being replaced.
    #[error("the worker did not answer within {0:?}")]
    Timeout(Duration),
    /// A subspace worker answered with something that breaks the protocol.
    #[error("the subspace worker sent {0}")]
    Protocol(&'static str),
}

/// One serving worker.
pub struct Link {
    pid: i32,
    chan: AsyncChannel,
    pending: RefCell<HashMap<u64, oneshot::Sender<Reply>>>,
    dead: Cell<bool>,
}

impl Link {
    /// Requests in flight.
    fn load(&self) -> usize {
        self.pending.borrow().len()
    }
}

/// Deaths within this window count towards back-off and the breaker.
const DEATH_WINDOW: Duration = Duration::from_secs(60);
/// This many deaths within the window open the breaker.
const BREAKER_DEATHS: usize = 5;
/// How long a request waits for a worker that is being restarted.
const WAIT_FOR_WORKER: Duration = Duration::from_secs(2);

/// The channel to the worker supervisor, shared by the pools it starts
/// workers for (one exchange at a time).
pub struct Supervisor {
    chan: AsyncChannel,
    busy: tokio::sync::Mutex<()>,
}

impl Supervisor {
    /// The supervisor behind `chan`.
    pub fn new(chan: AsyncChannel) -> Rc<Supervisor> {
        Rc::new(Supervisor {
            chan,
            busy: tokio::sync::Mutex::new(()),
        })
    }

    /// Closes the channel to the supervisor: it exits, and so does every
    /// serving worker once the broker's ends of their channels close.
    pub fn close(&self) {
        let _ = nix::sys::socket::shutdown(
            self.chan.as_fd().as_raw_fd(),
            nix::sys::socket::Shutdown::Both,
        );
    }
}

/// The work one serving worker may have in flight, in microseconds of
/// kernel time (see [`cost`]): enough to keep it fed (the next request is
/// there when it finishes one; dozens of cheap ones, a handful of network
/// namespaces), little enough that a request of another uid never waits
/// behind more than about this much work.
const BUDGET_PER_WORKER_US: u32 = 2000;

/// What a request costs a worker, roughly, in microseconds (the kernel's
/// own times on the reference machine: a network namespace ~360 µs, a
/// mount namespace ~110 µs, a subspace ~500 µs, the others 10-35 µs), plus
/// 20 for the round trip.
pub fn cost(req: &WorkerRequest) -> u32 {
    use spacer_proto::{NsType, Spaces};
    let ns = |t: NsType| match t {
        NsType::Net => 360,
        NsType::Mnt => 110,
        NsType::Ipc => 35,
        _ => 15,
    };
    20 + match req {
        WorkerRequest::Rooms { spaces, .. } => Spaces::from_bits_truncate(*spaces)
            .types()
            .map(ns)
            .sum::<u32>(),
        WorkerRequest::Subspace { .. } => 500,
        WorkerRequest::Alive { rooms, .. } => rooms.len() as u32,
        WorkerRequest::End { .. } => 0,
    }
}

/// A waiting request: its cost, and how to tell it to go.
type Waiter = (u32, oneshot::Sender<()>);

/// Fair dispatch: requests beyond the work budget wait in a queue per uid,
/// and freed budget goes to the uids in turn, so one uid's backlog never
/// sits in front of another uid's request.
struct Fair {
    budget: u32,
    queues: RefCell<HashMap<u32, VecDeque<Waiter>>>,
    /// Uids with waiting requests, in turn order.
    turn: RefCell<VecDeque<u32>>,
    /// Work in flight.
    load: Cell<u32>,
}

/// Budget taken by a request; given back (and handed to the next uid in
/// turn) on drop.
struct Slot<'a> {
    fair: &'a Fair,
    cost: u32,
}

impl Fair {
    fn new(budget: u32) -> Fair {
        Fair {
            budget,
            queues: RefCell::default(),
            turn: RefCell::default(),
            load: Cell::new(0),
        }
    }

    /// Whether work of `cost` may start now (anything may, on an idle
    /// worker).
    fn fits(&self, cost: u32) -> bool {
        self.load.get() == 0 || self.load.get() + cost <= self.budget
    }

    async fn acquire(&self, uid: u32, cost: u32) -> Slot<'_> {
        loop {
            if self.turn.borrow().is_empty() && self.fits(cost) {
                self.load.set(self.load.get() + cost);
                return Slot { fair: self, cost };
            }
            let (tx, rx) = oneshot::channel();
            {
                let mut queues = self.queues.borrow_mut();
                let q = queues.entry(uid).or_default();
                if q.is_empty() {
                    self.turn.borrow_mut().push_back(uid);
                }
                q.push_back((cost, tx));
            }
            // Budget handed over arrives taken already.
            let mut waiting = Waiting {
                fair: self,
                rx,
                cost,
                got: false,
            };
            waiting.wait().await;
            if waiting.got {
                return Slot { fair: self, cost };
            }
        }
    }

    /// Gives back `cost`, then starts the waiting requests that fit, the
    /// uids in turn.
    fn release(&self, cost: u32) {
        self.load.set(self.load.get().saturating_sub(cost));
        loop {
            let Some(&uid) = self.turn.borrow().front() else {
                return;
            };
            let mut queues = self.queues.borrow_mut();
            let Some(q) = queues.get_mut(&uid) else {
                self.turn.borrow_mut().pop_front();
                continue;
            };
            let Some(&(next, _)) = q.front() else {
                queues.remove(&uid);
                self.turn.borrow_mut().pop_front();
                continue;
            };
            if !self.fits(next) {
                return;
            }
            let (_, tx) = q.pop_front().expect("checked");
            self.turn.borrow_mut().pop_front();
            if q.is_empty() {
                queues.remove(&uid);
            } else {
                self.turn.borrow_mut().push_back(uid);
            }
            drop(queues);
            if tx.send(()).is_ok() {
                self.load.set(self.load.get() + next);
            }
            // A waiter that gave up is skipped.
        }
    }
}

/// A request waiting for budget.
struct Waiting<'a> {
    fair: &'a Fair,
    rx: oneshot::Receiver<()>,
    cost: u32,
    got: bool,
}

impl Waiting<'_> {
    async fn wait(&mut self) {
        self.got = (&mut self.rx).await.is_ok();
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // Dropped while waiting (its request was abandoned): budget handed
        // over meanwhile is passed on.
        if !self.got {
            self.rx.close();
            if self.rx.try_recv().is_ok() {
                self.fair.release(self.cost);
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.fair.release(self.cost);
    }
}

/// A pool of serving workers of one kind.
pub struct Pool {
    fair: Fair,
    sup: Rc<Supervisor>,
    kind: WorkerKind,
    links: RefCell<Vec<Rc<Link>>>,
    desired: usize,
    timeout: Duration,
    next_id: Cell<u64>,
    /// A worker came up (wakes requests waiting for one).
    up: Notify,
    /// A worker went down (wakes the manager).
    down: Notify,
    deaths: RefCell<VecDeque<Instant>>,
    breaker_open: Cell<bool>,
    /// While the breaker is open, one start is tried this often.
    breaker_retry: Duration,
}

impl Pool {
    /// A pool of `desired` serving workers of `kind`, started by `sup`.
    pub fn new(
        sup: Rc<Supervisor>,
        kind: WorkerKind,
        desired: usize,
        timeout: Duration,
        breaker_retry: Duration,
    ) -> Rc<Pool> {
        Rc::new(Pool {
            fair: Fair::new(BUDGET_PER_WORKER_US * desired.max(1) as u32),
            sup,
            kind,
            links: RefCell::new(Vec::new()),
            desired: desired.max(1),
            timeout,
            next_id: Cell::new(1),
            up: Notify::new(),
            down: Notify::new(),
            deaths: RefCell::new(VecDeque::new()),
            breaker_open: Cell::new(false),
            breaker_retry,
        })
    }

    /// The per-request deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Resolves once a worker of this pool is running.
    pub async fn running(&self) {
        loop {
            // Made before the check: a start in between still wakes it.
            let up = self.up.notified();
            if !self.links.borrow().is_empty() {
                return;
            }
            up.await;
        }
    }

    /// Pids of the live serving workers.
    pub fn pids(&self) -> Vec<i32> {
        self.links.borrow().iter().map(|l| l.pid).collect()
    }

    /// Sends a request of `uid` built from a fresh id, with `fds`, to the
    /// least loaded worker once the fair dispatch gives it a slot, and waits
    /// for its reply (at most the request timeout; a
    /// worker that misses it is killed and replaced).
    pub async fn call(
        self: &Rc<Self>,
        uid: u32,
        make: impl Fn(u64) -> WorkerRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Reply, CallError> {
        let _slot = self.fair.acquire(uid, cost(&make(0))).await;
        // A request whose send fails never reached a worker (it had died and
        // the broker had not noticed yet): safe to send once more, to a
        // fresh one.
        let mut tries = 2;
        loop {
            tries -= 1;
            let link = self.pick().await?;
            let id = self.next_id.get();
            self.next_id.set(id.wrapping_add(1));
            let (tx, rx) = oneshot::channel();
            link.pending.borrow_mut().insert(id, tx);
            if link.chan.send_msg(&make(id), fds).await.is_err() {
                link.pending.borrow_mut().remove(&id);
                self.retire(&link, "channel closed").await;
                if tries > 0 {
                    continue;
                }
                return Err(CallError::Died);
            }
            return match tokio::time::timeout(self.timeout, rx).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err(CallError::Died),
                Err(_) => {
                    link.pending.borrow_mut().remove(&id);
                    tracing::warn!(target: "spacer::event", event = "worker_hung", pid = link.pid, "worker missed the request deadline; replacing it");
                    self.retire(&link, "hung").await;
                    Err(CallError::Timeout(self.timeout))
                }
            };
        }
    }

    async fn pick(&self) -> Result<Rc<Link>, CallError> {
        let deadline = tokio::time::Instant::now() + WAIT_FOR_WORKER;
        loop {
            if self.breaker_open.get() {
                return Err(CallError::Unavailable(
                    "the worker keeps failing; retrying slowly",
                ));
            }
            let best = self
                .links
                .borrow()
                .iter()
                .filter(|l| !l.dead.get())
                .min_by_key(|l| l.load())
                .cloned();
            if let Some(l) = best {
                return Ok(l);
            }
            if tokio::time::timeout_at(deadline, self.up.notified())
                .await
                .is_err()
            {
                return Err(CallError::Unavailable("no worker is running"));
            }
        }
    }

    /// Keeps `desired` workers running. Runs for the life of the broker.
    pub async fn manage(self: Rc<Self>) {
        loop {
            let live = self.links.borrow().iter().filter(|l| !l.dead.get()).count();
            if live >= self.desired {
                self.down.notified().await;
                continue;
            }
            if let Some(wait) = self.backoff() {
                tokio::time::sleep(wait).await;
            }
            match self.spawn_one().await {
                Ok(link) => {
                    tokio::task::spawn_local(self.clone().read_replies(link.clone()));
                    // In service once it has answered: its own set-up (the
                    // namespaces it keeps open) is done by then.
                    if !self.answers(&link).await {
                        self.retire(&link, "no answer at start").await;
                        continue;
                    }
                    if self.breaker_open.replace(false) {
                        tracing::info!(target: "spacer::event", event = "breaker_closed", "worker running again; serving");
                    }
                    tracing::info!(target: "spacer::event", event = "worker_started", pid = link.pid, "worker started");
                    self.links.borrow_mut().push(link);
                    self.up.notify_waiters();
                }
                Err(reason) => {
                    tracing::error!(target: "spacer::event", event = "worker_start_failed", reason = %reason, "cannot start a worker");
                    self.record_death();
                }
            }
        }
    }

    /// Whether a new worker answers a request that asks nothing (an
    /// `Alive` about no rooms; a spawner answers it `Invalid`) within the
    /// request deadline.
    async fn answers(&self, link: &Link) -> bool {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        let (tx, rx) = oneshot::channel();
        link.pending.borrow_mut().insert(id, tx);
        let probe = WorkerRequest::Alive {
            id,
            nstype: spacer_proto::NsType::Net,
            rooms: Vec::new(),
        };
        if link.chan.send_msg(&probe, &[]).await.is_err() {
            link.pending.borrow_mut().remove(&id);
            return false;
        }
        let answered = matches!(tokio::time::timeout(self.timeout, rx).await, Ok(Ok(_)));
        link.pending.borrow_mut().remove(&id);
        answered
    }

    /// How long to wait before the next start, from recent deaths; opens
    /// the breaker on a crash loop.
    fn backoff(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut deaths = self.deaths.borrow_mut();
        while deaths.front().is_some_and(|t| now - *t > DEATH_WINDOW) {
            deaths.pop_front();
        }
        let n = deaths.len();
        if n >= BREAKER_DEATHS {
            if !self.breaker_open.replace(true) {
                tracing::error!(target: "spacer::event", event = "breaker_open", deaths = n, retry_s = self.breaker_retry.as_secs(), "worker crash loop: failing closed, retrying slowly");
                // Requests waiting for a worker learn now.
                self.up.notify_waiters();
            }
            return Some(self.breaker_retry);
        }
        match n {
            0 | 1 => None,
            n => Some(Duration::from_millis(50 << (n - 2).min(6))),
        }
    }

    fn record_death(&self) {
        self.deaths.borrow_mut().push_back(Instant::now());
    }

    async fn spawn_one(&self) -> Result<Rc<Link>, String> {
        let _guard = self.sup.busy.lock().await;
        self.sup
            .chan
            .send_msg(&SupervisorRequest::Spawn { kind: self.kind }, &[])
            .await
            .map_err(|e| format!("asking the supervisor: {e}"))?;
        let mut buf = vec![0u8; spacer_proto::internal::MAX_BYTES];
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            self.sup
                .chan
                .recv_msg::<SupervisorReply>(&mut buf, Trust::Kinds),
        )
        .await
        .map_err(|_| "the supervisor did not answer".to_owned())?;
        match got {
            Ok(Some((SupervisorReply::Spawned { pid }, fds))) => {
                let mut fds = fds.into_iter();
                let chan = fds.next().expect("two fds");
                let chan = Channel::from_fd(chan)
                    .and_then(AsyncChannel::new)
                    .map_err(|e| format!("the worker's channel: {e}"))?;
                Ok(Rc::new(Link {
                    pid,
                    chan,
                    pending: RefCell::new(HashMap::new()),
                    dead: Cell::new(false),
                }))
            }
            Ok(None) => Err("the supervisor has exited".into()),
            Ok(Some((SupervisorReply::Failed { reason }, _))) => Err(reason),
            Err(MessageError::Recv(e)) => Err(format!("reading the supervisor's answer: {e}")),
            Err(MessageError::Message(_)) | Err(_) => {
                Err("the supervisor sent a malformed answer".into())
            }
        }
    }

    /// Takes a worker out of service and has the supervisor kill it (a
    /// no-op for one already dead) and forget it.
    async fn retire(&self, link: &Rc<Link>, reason: &'static str) {
        self.mark_dead(link, reason);
        let _guard = self.sup.busy.lock().await;
        let _ = self
            .sup
            .chan
            .send_msg(&SupervisorRequest::Kill { pid: link.pid }, &[])
            .await;
    }

    fn mark_dead(&self, link: &Rc<Link>, reason: &'static str) {
        if !link.dead.replace(true) {
            tracing::warn!(target: "spacer::event", event = "worker_exited", pid = link.pid, reason, "worker out of service; starting another");
            // Requests in flight learn at once (their senders are dropped).
            link.pending.borrow_mut().clear();
            self.links.borrow_mut().retain(|l| !Rc::ptr_eq(l, link));
            self.record_death();
            self.down.notify_one();
        }
    }

    /// Hands each reply to the request waiting for it; ends when the worker
    /// does.
    async fn read_replies(self: Rc<Self>, link: Rc<Link>) {
        let mut buf = vec![0u8; spacer_proto::internal::MAX_BYTES];
        let why = loop {
            // The host worker is more trusted than the broker; its fds are
            // checked by kind by every client.
            match link
                .chan
                .recv_msg::<WorkerReply>(&mut buf, Trust::Counts)
                .await
            {
                Ok(Some((reply, fds))) => {
                    let started = match reply {
                        WorkerReply::Subspace { worker_pid, .. }
                            if self.kind == WorkerKind::Subspaces =>
                        {
                            Some(Unserved::new(self.clone(), worker_pid))
                        }
                        _ => None,
                    };
                    // No waiter (it timed out or its client left), or one
                    // that is gone before it reads: all of it is dropped,
                    // the fds closed and a subspace worker ended.
                    if let Some(tx) = link.pending.borrow_mut().remove(&reply.id()) {
                        let _ = tx.send((reply, fds, started));
                    }
                }
                Ok(None) => break "exited",
                Err(MessageError::Message(InternalError::Malformed)) => break "malformed reply",
                Err(MessageError::Message(_)) => break "reply fds do not match the reply",
                Err(_) => break "channel error",
            }
        };
        self.retire(&link, why).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests that asked in this order, of these uids and costs, start in
    /// the order returned, as each started one finishes in turn.
    fn order(budget: u32, asks: &[(u32, u32)]) -> Vec<usize> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let fair = Rc::new(Fair::new(budget));
            let started = Rc::new(RefCell::new(Vec::new()));
            let (done_tx, mut done_rx) =
                tokio::sync::mpsc::unbounded_channel::<oneshot::Sender<()>>();
            for (i, &(uid, cost)) in asks.iter().enumerate() {
                let (fair, started, done_tx) = (fair.clone(), started.clone(), done_tx.clone());
                tokio::task::spawn_local(async move {
                    let _slot = fair.acquire(uid, cost).await;
                    started.borrow_mut().push(i);
                    let (tx, rx) = oneshot::channel();
                    done_tx.send(tx).unwrap();
                    let _ = rx.await;
                });
                // Each asks before the next.
                tokio::task::yield_now().await;
            }
            // Finish the started ones one by one, oldest first.
            for _ in 0..asks.len() {
                let tx = done_rx.recv().await.unwrap();
                let _ = tx.send(());
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
            }
            let v = started.borrow().clone();
            v
        })
    }

    #[test]
    fn a_backlog_of_one_uid_does_not_go_first() {
        // Uid 1 fills the budget and queues three more; uid 2 asks last and
        // starts second of those waiting, not fourth.
        let v = order(100, &[(1, 50), (1, 50), (1, 50), (1, 50), (1, 50), (2, 50)]);
        assert_eq!(v, vec![0, 1, 2, 5, 3, 4]);
    }

    #[test]
    fn cheap_requests_share_the_budget_and_one_too_big_still_runs_alone() {
        // Ten cheap ones at once; one bigger than the budget waits for an
        // idle worker, then runs.
        let mut asks = vec![(1, 10); 10];
        asks.push((2, 500));
        asks.push((1, 10));
        let v = order(100, &asks);
        assert_eq!(v[..10], (0..10).collect::<Vec<_>>()[..]);
        assert_eq!(v[10..], [10, 11]);
    }
}
