//! Per-uid counters behind the policy's limits. The broker runs on one
//! thread, so "decide, then charge" happens without an `.await` in between:
//! two concurrent requests at limit − 1 cannot both pass.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use spacer_proto::{NsType, Spaces};

/// Requests in the last 60 seconds, in one-second buckets: exact to the
/// second, fixed memory whatever the rate.
#[derive(Debug)]
struct Window {
    buckets: [(u64, u32); 60],
}

impl Default for Window {
    fn default() -> Window {
        Window {
            buckets: [(0, 0); 60],
        }
    }
}

impl Window {
    fn count(&self, now: u64) -> u32 {
        self.buckets
            .iter()
            .filter(|(sec, _)| *sec + 60 > now)
            .map(|(_, n)| *n)
            .sum()
    }

    fn add(&mut self, now: u64) {
        let slot = &mut self.buckets[(now % 60) as usize];
        if slot.0 != now {
            *slot = (now, 0);
        }
        slot.1 += 1;
    }

    fn remove(&mut self, at: u64) {
        let slot = &mut self.buckets[(at % 60) as usize];
        if slot.0 == at && slot.1 > 0 {
            slot.1 -= 1;
        }
    }

    fn is_empty(&self, now: u64) -> bool {
        self.count(now) == 0
    }
}

#[derive(Debug, Default)]
struct PerUid {
    rate: Window,
    refusals: Refusals,
    refused_connections: RefusalLog,
    live_subspaces: u32,
    connections: u32,
    /// Rooms handed out, per room type, by `(id, inode)` (see
    /// `spacer_proto::fd::namespace_handle`), until a worker finds them gone.
    rooms: [Vec<RoomId>; 6],
    /// Rooms being made, per room type (charged, not yet handed out).
    rooms_pending: [u32; 6],
}

/// A namespace's id and inode, which make its file handle with its type.
pub type RoomId = (u64, u32);

/// The index of a room type in [`PerUid::rooms`].
fn slot(t: NsType) -> usize {
    Spaces::ROOMS.types().position(|x| x == t).unwrap_or(0)
}

/// A token bucket for refused requests (denied or invalid). Every request
/// is audited, so this bounds what one uid can write into the audit log
/// without dropping a record: past the burst, refusals are answered late,
/// in proportion to the uid's deficit, so that all its connections together
/// get [`REFUSAL_RATE`] per second. Allowed requests are never slowed.
#[derive(Debug)]
struct Refusals {
    tokens: f64,
    last: Option<Instant>,
}

impl Default for Refusals {
    fn default() -> Refusals {
        Refusals {
            tokens: REFUSAL_BURST,
            last: None,
        }
    }
}

/// Refusals per uid per second, sustained.
pub const REFUSAL_RATE: f64 = 100.0;
/// Refusals per uid answered without delay after a quiet spell.
pub const REFUSAL_BURST: f64 = 1000.0;

impl Refusals {
    /// Takes one token; how long to wait before answering.
    fn take(&mut self, now: Instant) -> std::time::Duration {
        if let Some(last) = self.last {
            let earned = now.saturating_duration_since(last).as_secs_f64() * REFUSAL_RATE;
            self.tokens = (self.tokens + earned).min(REFUSAL_BURST);
        }
        self.last = Some(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_secs_f64(-self.tokens / REFUSAL_RATE)
        }
    }

    fn is_full(&self, now: Instant) -> bool {
        self.last.is_none_or(|last| {
            self.tokens + now.saturating_duration_since(last).as_secs_f64() * REFUSAL_RATE
                >= REFUSAL_BURST
        })
    }
}

/// The audit records of one uid's refused connections: the first
/// [`REFUSAL_RECORDS`] of each [`REFUSAL_INTERVAL`] are written one by one,
/// the rest counted and written as one record when the interval ends. A
/// refused connection costs its peer nothing, so without this one uid
/// could fill the journal as fast as it can connect.
#[derive(Debug, Default)]
struct RefusalLog {
    since: Option<Instant>,
    written: u32,
    held: u32,
}

/// Refused connections of one uid recorded one by one per interval.
pub const REFUSAL_RECORDS: u32 = 10;
/// The interval of [`REFUSAL_RECORDS`].
pub const REFUSAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// What to do with a refused connection's audit record.
#[derive(Debug, PartialEq, Eq)]
pub enum RefusalRecord {
    /// Write it.
    Write,
    /// Count it; the first one held in an interval also asks the caller
    /// to write the count when the interval ends
    /// ([`Counters::take_held_refusals`], after the returned wait).
    Hold {
        /// `Some(wait)` for the first held record of the interval.
        flush_after: Option<std::time::Duration>,
    },
}

/// How many of a broker-wide cap's slots are kept for uids (accounts)
/// holding none: a sixteenth, at least one (none for a cap below 2). So
/// however many ids one tenant has, and whatever its own caps, it cannot
/// take the slots a new tenant needs for its first connection or subspace.
pub fn reserve_of(cap: u32) -> u32 {
    if cap < 2 {
        0
    } else {
        (cap / 16).max(1)
    }
}

/// All counters.
#[derive(Debug)]
pub struct Counters {
    start: Instant,
    per_uid: RefCell<HashMap<u32, PerUid>>,
    total_connections: RefCell<u32>,
    total_subspaces: RefCell<u32>,
}

/// What a charge took, to give back if the request fails.
#[derive(Debug, Clone, Copy)]
struct Charge {
    uid: u32,
    second: u64,
    subspace: bool,
    rooms: Spaces,
}

/// The charge of an allowed request, held while it is served: given back
/// when dropped, unless the request handed out what it was charged for
/// ([`ChargeGuard::rooms_handed_out`], [`ChargeGuard::into_subspace`]).
/// Every way a request can fail after its charge therefore refunds it.
#[must_use = "a charge dropped at once is refunded at once"]
#[derive(Debug)]
pub struct ChargeGuard<'a> {
    counters: &'a Counters,
    charge: Option<Charge>,
}

impl ChargeGuard<'_> {
    /// The rooms were sent to the client: they stop being pending, and
    /// `made` (as far as they could be identified; nothing if the client
    /// did not take them) count against the uid until they are gone. The
    /// request stays counted against the uid's rate.
    pub fn rooms_handed_out(mut self, made: Vec<(NsType, RoomId)>) {
        if let Some(c) = self.charge.take() {
            self.counters.rooms_made(&c, made);
        }
    }

    /// A subspace was started: its live-subspace charge now belongs to the
    /// subspace, given back when it ends ([`Counters::subspace_closed`]).
    pub fn into_subspace(mut self) {
        self.charge = None;
    }
}

impl Drop for ChargeGuard<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.charge.take() {
            self.counters.refund(c);
        }
    }
}

impl Counters {
    /// Empty counters.
    pub fn new() -> Counters {
        Counters {
            start: Instant::now(),
            per_uid: RefCell::new(HashMap::new()),
            total_connections: RefCell::new(0),
            total_subspaces: RefCell::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// The policy's view of a uid right now.
    pub fn usage(&self, uid: u32, depth: u32) -> spacer_policy::Usage {
        let now = self.now();
        let map = self.per_uid.borrow();
        let u = map.get(&uid);
        let mut live_rooms = [0; 6];
        if let Some(u) = u {
            for (i, n) in live_rooms.iter_mut().enumerate() {
                *n = u.rooms[i].len() as u32 + u.rooms_pending[i];
            }
        }
        spacer_policy::Usage {
            requests_last_minute: u.map_or(0, |u| u.rate.count(now)),
            live_subspaces: u.map_or(0, |u| u.live_subspaces),
            depth,
            live_rooms,
        }
    }

    /// The rooms of `uid` of type `t` handed out and not yet found gone.
    pub fn rooms_of(&self, uid: u32, t: NsType) -> Vec<RoomId> {
        self.per_uid
            .borrow()
            .get(&uid)
            .map(|u| u.rooms[slot(t)].clone())
            .unwrap_or_default()
    }

    /// Every uid and type with rooms recorded.
    pub fn rooms_held(&self) -> Vec<(u32, NsType)> {
        let map = self.per_uid.borrow();
        map.iter()
            .flat_map(|(&uid, u)| {
                Spaces::ROOMS
                    .types()
                    .filter(|&t| !u.rooms[slot(t)].is_empty())
                    .map(move |t| (uid, t))
            })
            .collect()
    }

    /// Forgets rooms of `uid` of type `t` a worker found gone.
    pub fn rooms_gone(&self, uid: u32, t: NsType, gone: &[RoomId]) {
        if let Some(u) = self.per_uid.borrow_mut().get_mut(&uid) {
            u.rooms[slot(t)].retain(|r| !gone.contains(r));
        }
        self.tidy(uid);
    }

    /// The rooms of a charge were handed out (`made`, as far as they could
    /// be identified) or not (`made` empty): they stop being pending.
    fn rooms_made(&self, c: &Charge, made: Vec<(NsType, RoomId)>) {
        if let Some(u) = self.per_uid.borrow_mut().get_mut(&c.uid) {
            for t in c.rooms.types() {
                let p = &mut u.rooms_pending[slot(t)];
                *p = p.saturating_sub(1);
            }
            for (t, r) in made {
                u.rooms[slot(t)].push(r);
            }
        }
        self.tidy(c.uid);
    }

    /// Counts a refused request of `uid`; returns how long to wait before
    /// answering it (zero within the uid's refusal budget).
    pub fn refused(&self, uid: u32) -> std::time::Duration {
        self.per_uid
            .borrow_mut()
            .entry(uid)
            .or_default()
            .refusals
            .take(Instant::now())
    }

    /// Whether a refused connection of `uid` gets an audit record of its
    /// own now (see [`RefusalLog`]).
    pub fn connection_refused(&self, uid: u32) -> RefusalRecord {
        let now = Instant::now();
        let mut map = self.per_uid.borrow_mut();
        let log = &mut map.entry(uid).or_default().refused_connections;
        let since = match log.since {
            Some(t) if now.saturating_duration_since(t) < REFUSAL_INTERVAL => t,
            _ if log.held > 0 => {
                // The interval's flush has not run yet: keep holding.
                log.held += 1;
                return RefusalRecord::Hold { flush_after: None };
            }
            _ => {
                *log = RefusalLog {
                    since: Some(now),
                    written: 0,
                    held: 0,
                };
                now
            }
        };
        if log.written < REFUSAL_RECORDS {
            log.written += 1;
            return RefusalRecord::Write;
        }
        log.held += 1;
        RefusalRecord::Hold {
            flush_after: (log.held == 1)
                .then(|| (since + REFUSAL_INTERVAL).saturating_duration_since(now)),
        }
    }

    /// The refused connections of `uid` held since its last record (to be
    /// written as one), and a fresh interval.
    pub fn take_held_refusals(&self, uid: u32) -> u32 {
        let held = match self.per_uid.borrow_mut().get_mut(&uid) {
            Some(u) => std::mem::take(&mut u.refused_connections).held,
            None => 0,
        };
        self.tidy(uid);
        held
    }

    /// Live subspaces in all.
    #[cfg(test)]
    fn total_subspaces(&self) -> u32 {
        *self.total_subspaces.borrow()
    }

    /// Whether `uid` may start one more subspace under the broker's cap
    /// `max` on live subspaces in all; the reason otherwise. The last
    /// [`reserve_of`] slots are kept for uids with none live.
    pub fn subspace_slot(&self, uid: u32, max: u32) -> Result<(), String> {
        let total = *self.total_subspaces.borrow();
        if total >= max {
            return Err(format!("the broker's subspace limit {max} is reached"));
        }
        let reserve = reserve_of(max);
        let live = self
            .per_uid
            .borrow()
            .get(&uid)
            .map_or(0, |u| u.live_subspaces);
        if live > 0 && total >= max - reserve {
            return Err(format!(
                "the broker's subspace limit {max} is nearly reached (the last {reserve} are kept for uids with none live)"
            ));
        }
        Ok(())
    }

    /// Charges an allowed request (and, for a subspace, one live subspace;
    /// for rooms, one pending room of each type), until the guard is
    /// dropped or committed.
    pub fn charge(&self, uid: u32, subspace: bool, rooms: Spaces) -> ChargeGuard<'_> {
        let second = self.now();
        let mut map = self.per_uid.borrow_mut();
        let u = map.entry(uid).or_default();
        u.rate.add(second);
        if subspace {
            u.live_subspaces += 1;
            *self.total_subspaces.borrow_mut() += 1;
        }
        for t in rooms.types() {
            u.rooms_pending[slot(t)] += 1;
        }
        ChargeGuard {
            counters: self,
            charge: Some(Charge {
                uid,
                second,
                subspace,
                rooms,
            }),
        }
    }

    /// Gives back a charge whose request failed: nothing is charged for
    /// namespaces that were not handed out.
    fn refund(&self, c: Charge) {
        let mut map = self.per_uid.borrow_mut();
        if let Some(u) = map.get_mut(&c.uid) {
            u.rate.remove(c.second);
            for t in c.rooms.types() {
                let p = &mut u.rooms_pending[slot(t)];
                *p = p.saturating_sub(1);
            }
            if c.subspace {
                u.live_subspaces = u.live_subspaces.saturating_sub(1);
                let mut t = self.total_subspaces.borrow_mut();
                *t = t.saturating_sub(1);
            }
        }
        drop(map);
        self.tidy(c.uid);
    }

    /// A subspace ended.
    pub fn subspace_closed(&self, uid: u32) {
        if let Some(u) = self.per_uid.borrow_mut().get_mut(&uid) {
            u.live_subspaces = u.live_subspaces.saturating_sub(1);
        }
        {
            let mut t = self.total_subspaces.borrow_mut();
            *t = t.saturating_sub(1);
        }
        self.tidy(uid);
    }

    /// Admits a connection if the uid's cap (if any) and the global cap
    /// allow; returns which cap refused otherwise.
    pub fn open_connection(
        &self,
        uid: u32,
        per_uid_cap: Option<u32>,
        global_cap: u32,
    ) -> Result<(), String> {
        let mut total = self.total_connections.borrow_mut();
        if *total >= global_cap {
            return Err(format!(
                "the broker's connection limit {global_cap} is reached"
            ));
        }
        let mut map = self.per_uid.borrow_mut();
        let u = map.entry(uid).or_default();
        let reserve = reserve_of(global_cap);
        if u.connections > 0 && *total >= global_cap - reserve {
            return Err(format!(
                "the broker's connection limit {global_cap} is nearly reached (the last {reserve} are kept for uids with none open)"
            ));
        }
        if let Some(cap) = per_uid_cap {
            if u.connections >= cap {
                return Err(format!("max_connections {cap} reached"));
            }
        }
        u.connections += 1;
        *total += 1;
        Ok(())
    }

    /// A connection closed.
    pub fn close_connection(&self, uid: u32) {
        {
            let mut total = self.total_connections.borrow_mut();
            *total = total.saturating_sub(1);
        }
        if let Some(u) = self.per_uid.borrow_mut().get_mut(&uid) {
            u.connections = u.connections.saturating_sub(1);
        }
        self.tidy(uid);
    }

    /// Open connections in all.
    pub fn total_connections(&self) -> u32 {
        *self.total_connections.borrow()
    }

    /// Forgets a uid with nothing left to count, so the map stays as small
    /// as the set of active uids.
    fn tidy(&self, uid: u32) {
        let now = self.now();
        let mut map = self.per_uid.borrow_mut();
        if map.get(&uid).is_some_and(|u| {
            u.connections == 0
                && u.live_subspaces == 0
                && u.rooms.iter().all(Vec::is_empty)
                && u.rooms_pending.iter().all(|&p| p == 0)
                && u.rate.is_empty(now)
                && u.refusals.is_full(Instant::now())
                && u.refused_connections.held == 0
                && u.refused_connections
                    .since
                    .is_none_or(|t| t.elapsed() >= REFUSAL_INTERVAL)
        }) {
            map.remove(&uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connections_past_the_first_ten_are_held_and_counted() {
        let c = Counters::new();
        for _ in 0..REFUSAL_RECORDS {
            assert_eq!(c.connection_refused(7), RefusalRecord::Write);
        }
        let RefusalRecord::Hold {
            flush_after: Some(wait),
        } = c.connection_refused(7)
        else {
            panic!("the eleventh is held, with a flush")
        };
        assert!(wait <= REFUSAL_INTERVAL);
        for _ in 0..99 {
            assert_eq!(
                c.connection_refused(7),
                RefusalRecord::Hold { flush_after: None }
            );
        }
        // Another uid has its own budget.
        assert_eq!(c.connection_refused(8), RefusalRecord::Write);
        assert_eq!(c.take_held_refusals(7), 100);
        // After the flush: a fresh interval.
        assert_eq!(c.connection_refused(7), RefusalRecord::Write);
        assert_eq!(c.take_held_refusals(7), 0);
    }

    #[test]
    fn window_counts_the_last_minute_only() {
        let mut w = Window::default();
        w.add(10);
        w.add(10);
        w.add(40);
        assert_eq!(w.count(40), 3);
        assert_eq!(w.count(69), 3);
        assert_eq!(w.count(70), 1);
        assert_eq!(w.count(100), 0);
        w.remove(40);
        assert_eq!(w.count(41), 2);
        // A bucket reused a minute later starts from zero.
        w.add(70);
        assert_eq!(w.count(70), 1);
    }

    #[test]
    fn refund_gives_back_rate_and_subspace() {
        let c = Counters::new();
        let ch = c.charge(5, true, Spaces::NET);
        assert_eq!(c.usage(5, 0).live_rooms_of(NsType::Net), 1);
        assert_eq!(c.usage(5, 0).requests_last_minute, 1);
        assert_eq!(c.usage(5, 0).live_subspaces, 1);
        drop(ch);
        assert_eq!(c.usage(5, 0), spacer_policy::Usage::default());
        assert!(c.per_uid.borrow().is_empty());
    }

    #[test]
    fn a_started_subspace_keeps_its_charge_until_it_closes() {
        let c = Counters::new();
        c.charge(5, true, Spaces::empty()).into_subspace();
        assert_eq!(c.usage(5, 0).live_subspaces, 1);
        assert_eq!(c.total_subspaces(), 1);
        c.subspace_closed(5);
        assert_eq!(c.usage(5, 0).live_subspaces, 0);
        assert_eq!(c.total_subspaces(), 0);
        // The request itself still counts against the rate.
        assert_eq!(c.usage(5, 0).requests_last_minute, 1);
    }

    #[test]
    fn rooms_not_taken_by_the_client_stop_counting_but_the_request_does() {
        let c = Counters::new();
        c.charge(6, false, Spaces::NET).rooms_handed_out(Vec::new());
        let u = c.usage(6, 0);
        assert_eq!(u.live_rooms_of(NsType::Net), 0);
        assert_eq!(u.requests_last_minute, 1);
    }

    #[test]
    fn rooms_count_while_pending_and_until_found_gone() {
        let c = Counters::new();
        let a = c.charge(7, false, Spaces::NET | Spaces::UTS);
        let b = c.charge(7, false, Spaces::NET);
        assert_eq!(c.usage(7, 0).live_rooms_of(NsType::Net), 2);
        drop(b);
        a.rooms_handed_out(vec![(NsType::Net, (10, 1)), (NsType::Uts, (11, 2))]);
        let u = c.usage(7, 0);
        assert_eq!(
            (u.live_rooms_of(NsType::Net), u.live_rooms_of(NsType::Uts)),
            (1, 1)
        );
        assert_eq!(c.rooms_held().len(), 2);
        c.rooms_gone(7, NsType::Net, &[(10, 1)]);
        c.rooms_gone(7, NsType::Uts, &[(11, 2)]);
        // Nothing left to count, rate window aside.
        assert_eq!(c.usage(7, 0).live_rooms, [0; 6]);
        assert!(c.rooms_held().is_empty());
    }

    #[test]
    fn refusals_past_the_burst_wait_in_proportion() {
        let mut r = Refusals::default();
        let t = Instant::now();
        for _ in 0..REFUSAL_BURST as usize {
            assert_eq!(r.take(t), std::time::Duration::ZERO);
        }
        // The bucket is empty: each further refusal waits 1/RATE more.
        let d1 = r.take(t);
        let d2 = r.take(t);
        assert!(d1 > std::time::Duration::ZERO && d2 > d1);
        // A second later, RATE tokens are back.
        let later = t + std::time::Duration::from_secs(1);
        assert_eq!(r.take(later), std::time::Duration::ZERO);
    }

    #[test]
    fn connection_caps_hold() {
        let c = Counters::new();
        assert!(c.open_connection(1, Some(2), 10).is_ok());
        assert!(c.open_connection(1, Some(2), 10).is_ok());
        assert_eq!(
            c.open_connection(1, Some(2), 10).unwrap_err(),
            "max_connections 2 reached"
        );
        assert!(c.open_connection(2, None, 3).is_ok());
        assert!(c.open_connection(3, None, 3).is_err());
        c.close_connection(1);
        assert!(c.open_connection(1, Some(2), 10).is_ok());
    }

    #[test]
    fn the_last_slots_of_the_broker_are_kept_for_uids_with_none() {
        // 32 in all, 2 kept: one uid with no cap of its own takes 30.
        let c = Counters::new();
        for _ in 0..30 {
            assert!(c.open_connection(1, None, 32).is_ok());
        }
        let refused = c.open_connection(1, None, 32).unwrap_err();
        assert!(refused.contains("nearly reached"), "{refused}");
        // Two newcomers get their first connection, not a second.
        assert!(c.open_connection(2, None, 32).is_ok());
        assert!(c.open_connection(2, None, 32).is_err());
        assert!(c.open_connection(3, None, 32).is_ok());
        assert!(c
            .open_connection(4, None, 32)
            .unwrap_err()
            .ends_with("is reached"));
        // The same for subspaces.
        for _ in 0..15 {
            assert!(c.subspace_slot(1, 16).is_ok());
            c.charge(1, true, Spaces::empty()).into_subspace();
        }
        assert!(c
            .subspace_slot(1, 16)
            .unwrap_err()
            .contains("nearly reached"));
        assert!(c.subspace_slot(2, 16).is_ok());
        assert_eq!(reserve_of(1), 0);
        assert_eq!(reserve_of(4096), 256);
    }
}
