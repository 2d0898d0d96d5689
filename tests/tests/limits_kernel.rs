//! Kernel limits and a broken audit sink give clear errors, leave nothing
//! behind and charge nothing.

use std::time::Duration;

use spacer_client::{Error, Spaces};
use spacer_tests::*;

#[test]
fn namespace_limit_fails_the_whole_request_and_charges_nothing() {
    // The per-user-namespace limit is lowered inside a subspace the tenant
    // owns, so nothing outside it is affected. Budget: 4 requests a minute.
    let b = Broker::start(&format!(
        "[[rule]]\nuid = {TENANT}\nallow = [\"cgroup\", \"ipc\", \"mnt\", \"net\", \"time\", \"uts\", \"user\"]\nrequests_per_minute = 4\n"
    ));
    let base = [fd_count(b.pid()), fd_count(b.worker_pid())];
    let v = b.probe_as(TENANT, TENANT, &["limit-net"]);
    let outcomes: Vec<&str> = v["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    // cgroup, ipc and mnt are made first; net then fails, and they are closed.
    assert_eq!(
        outcomes[0],
        "failed: subspace worker says: creating net namespace: ENOSPC (No space left on device)"
    );
    assert_eq!(v["worker_fds_before"], v["worker_fds_after"], "{v}");
    // Nothing charged for it: the subspace (1) and three more (2, 3, 4) are
    // allowed, then the budget is spent.
    assert_eq!(
        &outcomes[1..],
        [
            "ok",
            "ok",
            "ok",
            "denied: requests_per_minute 4 reached (rule 1)"
        ]
    );
    assert!(eventually(Duration::from_secs(3), || {
        fd_count(b.pid()) <= base[0] && fd_count(b.worker_pid()) <= base[1]
    }));
}

#[test]
fn user_namespace_nesting_limit_is_a_clear_error() {
    let b = Broker::start(TEST_POLICY);
    let v = b.probe_as(TENANT, TENANT, &["depth", "40"]);
    // The kernel nests user namespaces 32 levels below the host's (33 made
    // here from the host's level 0) and answers ENOSPC (EUSERS before Linux
    // 4.9) for the next.
    let reached = v["reached"].as_u64().unwrap();
    assert!((32..=33).contains(&reached), "{v}");
    let refusal = v["refusal"].as_str().unwrap();
    assert!(
        refusal.starts_with("failed: creating the user namespace: ENOSPC")
            || refusal.starts_with("failed: creating the user namespace: EUSERS"),
        "{refusal}"
    );
    // The broker and the worker are fine.
    assert!(b.client().rooms(Spaces::UTS).is_ok());
}

#[test]
fn broken_audit_sink_fails_grants_closed_and_says_why() {
    need_root();
    let dir = open_dir();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, TEST_POLICY).unwrap();
    let sock = dir.path().join("s.sock");
    let _broker = KillOnDrop(
        std::process::Command::new(bin("spacer-broker"))
            .arg("--socket")
            .arg(&sock)
            .arg("--policy")
            .arg(&policy)
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            )
            .spawn()
            .unwrap(),
    );
    assert!(eventually(Duration::from_secs(5), || {
        spacer_client::Client::connect(&sock).is_ok()
    }));
    let c = spacer_client::Client::connect(&sock).unwrap();
    let r = c.rooms(Spaces::UTS);
    assert!(
        matches!(&r, Err(Error::Unavailable(reason)) if reason == "service unavailable: the audit log cannot be written"),
        "{r:?}"
    );
    // Denials need no grant: still answered.
    let out = output_retrying(
        std::process::Command::new(copy_bin_to(dir.path(), "spacer"))
            .args(["rooms", "--net"])
            .env("SPACER_SOCKET", &sock)
            .uid_gid(STRANGER),
    );
    assert_eq!(out.status.code(), Some(3));
}
