//! Live rooms: the ones a uid holds are asked about (are they gone?) when
//! the uid is at its cap, and for everyone every [`ROOM_SWEEP`].

use std::rc::Rc;
use std::time::Duration;

use spacer_proto::internal::{self, WorkerReply, WorkerRequest};
use spacer_proto::NsType;

use crate::ctx::Ctx;

/// Asks a room worker which of `uid`'s rooms of type `t` still exist, and
/// forgets the others. Errors leave the count as it was.
pub async fn forget_gone(ctx: &Ctx, uid: u32, t: NsType) {
    let rooms = ctx.counters.rooms_of(uid, t);
    for chunk in rooms.chunks(internal::MAX_ALIVE) {
        let ask = |id| WorkerRequest::Alive {
            id,
            nstype: t,
            rooms: chunk.to_vec(),
        };
        if let Ok((WorkerReply::Alive { alive, .. }, _, _)) = ctx.pool.call(uid, ask, &[]).await {
            if alive.len() == chunk.len() {
                let gone: Vec<_> = chunk
                    .iter()
                    .zip(alive)
                    .filter(|(_, a)| !a)
                    .map(|(r, _)| *r)
                    .collect();
                ctx.counters.rooms_gone(uid, t, &gone);
            }
        }
    }
}

/// How often every uid's rooms are checked, so that the record of rooms
/// long gone does not grow.
const ROOM_SWEEP: Duration = Duration::from_secs(30);

/// Runs for the life of the broker: every [`ROOM_SWEEP`], forgets the
/// rooms that are gone.
pub async fn sweep(ctx: Rc<Ctx>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ROOM_SWEEP) => {}
            _ = ctx.stop.notified() => return,
        }
        for (uid, t) in ctx.counters.rooms_held() {
            forget_gone(&ctx, uid, t).await;
        }
    }
}
