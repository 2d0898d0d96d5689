//! A requester that stops every process it may signal, while asking for
//! subspaces, cannot stall the shared worker: a new subspace worker is not
//! the requester's to signal until its parent is done with it. Its own test
//! binary and uid, so the storm reaches nothing of other tests.

use std::time::{Duration, Instant};

use spacer_client::Spaces;
use spacer_tests::*;

const STORM: u32 = 4545;

#[test]
fn stopping_new_subspace_workers_cannot_stall_the_worker() {
    let b = Broker::start(&format!(
        "{TEST_POLICY}\n[[rule]]\nuid = {STORM}\nallow = [\"user\", \"pid\"]\n"
    ));
    let sock = b.socket.clone();
    let root = std::thread::spawn(move || {
        let c = spacer_client::Client::connect(&sock).unwrap();
        let mut worst = Duration::ZERO;
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            let t = Instant::now();
            c.rooms(Spaces::NET).expect("root is served throughout");
            worst = worst.max(t.elapsed());
        }
        worst
    });
    let v = b.probe_as(STORM, STORM, &["stop-storm", "4"]);
    let worst = root.join().unwrap();
    // During the storm a new subspace worker may be stopped before it is
    // ready (it is the requester's from its `unshare` on) and then fails at
    // its setup deadline; whether any got through is a matter of timing.
    // After the storm the uid is served again.
    assert_eq!(v["after"], "ok", "{v}");
    // Not the 10 s request deadline: nothing waited on a stopped process.
    assert!(worst < Duration::from_secs(2), "root waited {worst:?}");
    assert!(!b
        .events()
        .iter()
        .any(|e| e["event"] == "breaker_open" || e["event"] == "worker_hung"));
}
