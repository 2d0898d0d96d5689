//! `spacer bench` works end to end (a smoke test: no timing is asserted).

use spacer_tests::*;

fn bench(b: &Broker, args: &[&str]) -> Value {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    let out = b.spacer_as(0, 0, &all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_reports_the_documented_fields() {
    let b = Broker::start(TEST_POLICY);
    let v = bench(
        &b,
        &[
            "--uts",
            "--requests",
            "40",
            "--concurrency",
            "2",
            "--warmup",
            "2",
            "--json",
        ],
    );
    for k in [
        "requests",
        "concurrency",
        "per_sec",
        "p50_us",
        "p99_us",
        "max_us",
    ] {
        assert!(v.get(k).is_some(), "{k} missing: {v}");
    }
    assert_eq!(v["requests"], 40);
    assert_eq!(v["concurrency"], 2);
    assert!(v["p50_us"].as_u64().unwrap() <= v["max_us"].as_u64().unwrap());
}

#[test]
fn bench_raw_subspace_private_and_memory_modes_run() {
    let b = Broker::start(TEST_POLICY);
    let v = bench(
        &b,
        &[
            "--net",
            "--raw",
            "--requests",
            "10",
            "--warmup",
            "1",
            "--json",
        ],
    );
    assert!(
        v["raw"]["per_sec"].as_f64().unwrap() > 0.0 && v["ratio_to_raw"].as_f64().is_some(),
        "{v}"
    );
    let v = bench(
        &b,
        &["--subspace", "--requests", "10", "--warmup", "1", "--json"],
    );
    assert_eq!(v["requests"], 10);
    let v = bench(&b, &["--idle-clients", "20", "--json"]);
    assert!(v["broker_idle_rss_kib"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["worker_rss_kib"].as_array().unwrap().len(), 1);
    // Private mode needs its worker binary: next to `spacer` in the copy dir.
    copy_bin_to(b.dir(), "spacer-private-worker");
    let v = bench(
        &b,
        &[
            "--uts",
            "--private",
            "--requests",
            "10",
            "--warmup",
            "1",
            "--json",
        ],
    );
    assert!(v["private_startup"]["p50_us"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["private"]["requests"], 10);
}

#[test]
fn bench_reports_refused_connections_instead_of_waiting() {
    // Four connections where the broker allows two per uid: two are refused
    // at their first request, and the run must end with that error.
    let b = Broker::start_with(TEST_POLICY, &["--max-connections-per-uid", "2"]);
    let out = b.spacer_as(
        0,
        0,
        &["bench", "--uts", "--requests", "8", "--concurrency", "4"],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_connections 2"), "{err}");
}
