//! A requester that stops every process it may signal, while asking for
//! subspaces, cannot stall the shared worker: a new subspace worker is not
//! the requester's to signal until its parent is done with it. Its own test
//! binary and uid, so the storm reaches nothing of other tests.

use std::time::{Duration, Instant};

use spacer_client::Spaces;
use spacer_tests::*;

const STORM: u32 = 4545;

/// What a subspace request stopped during its setup gets: the worker
/// kills it at the setup deadline and answers.
const SETUP_MISSED: &str = "failed: the subspace worker did not get ready in time";

#[test]
fn stopping_new_subspace_workers_cannot_stall_the_worker() {
    let b = Broker::start(&format!(
        "{TEST_POLICY}\n[[rule]]\nuid = {STORM}\nallow = [\"user\", \"pid\", \"uts\"]\n"
    ));
    let base = b.fd_counts();
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
    // The storm reached this uid's processes (a subspace worker it was
    // handed out, or one it stopped during setup).
    assert!(v["stopped"].as_u64().unwrap() > 0, "{v}");
    // During the storm a new subspace worker is the requester's from its
    // `unshare` on, so it may be stopped before it is ready: whether a
    // request gets its subspace is a matter of timing. What is not: every
    // one is answered, either with the subspace or with the setup deadline's
    // failure, and none waits much past that deadline (2 s).
    for (outcome, ms) in v["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .zip(v["took_ms"].as_array().unwrap())
    {
        assert!(outcome == "ok" || outcome == SETUP_MISSED, "{v}");
        assert!(ms.as_u64().unwrap() < 4_000, "{v}");
    }
    // The uid itself is served throughout: its rooms, which no process of
    // its own makes, come every time.
    assert_eq!(
        v["rooms"],
        serde_json::json!(["ok", "ok", "ok", "ok"]),
        "{v}"
    );
    // After the storm its subspaces come again.
    assert_eq!(v["after"], "ok", "{v}");
    // Not the 10 s request deadline: nothing waited on a stopped process.
    assert!(worst < Duration::from_secs(2), "root waited {worst:?}");
    assert!(!b
        .events()
        .iter()
        .any(|e| e["event"] == "breaker_open" || e["event"] == "worker_hung"));
    b.assert_fds_back_to(&base);
}
