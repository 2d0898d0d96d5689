//! Subspaces end to end: user and PID namespaces with a worker inside,
//! owned by the requester, usable without privileges.

use std::time::Duration;

use spacer_client::Spaces;
use spacer_tests::*;

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_user_pid_is_pid_1_and_uid_0_for_root_and_tenant() {
    let b = Broker::start(TEST_POLICY);
    for uid in [0, TENANT] {
        let out = b.spacer_as(
            uid,
            uid,
            &["run", "--user", "--pid", "--", "sh", "-c", "echo $$; id -u"],
        );
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "uid {uid}: {stderr}");
        assert_eq!(stdout, "1\n0\n", "uid {uid}");
    }
}

#[test]
fn run_exits_with_the_command_status() {
    let b = Broker::start(TEST_POLICY);
    let out = b.spacer_as(
        TENANT,
        TENANT,
        &["run", "--user", "--pid", "--", "sh", "-c", "exit 7"],
    );
    assert_eq!(out.status.code(), Some(7));
    let out = b.spacer_as(
        TENANT,
        TENANT,
        &["run", "--user", "--", "sh", "-c", "exit 5"],
    );
    assert_eq!(out.status.code(), Some(5));
}

#[test]
fn run_user_net_sees_only_loopback() {
    let b = Broker::start(TEST_POLICY);
    let out = b.spacer_as(
        TENANT,
        TENANT,
        &["run", "--user", "--net", "--", "cat", "/proc/net/dev"],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let ifaces: Vec<&str> = stdout
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, vec!["lo"]);
}

#[test]
fn run_user_uts_changes_nothing_on_the_host() {
    let b = Broker::start(TEST_POLICY);
    let host = nix::unistd::gethostname().unwrap();
    let out = b.spacer_as(
        TENANT,
        TENANT,
        &[
            "run",
            "--user",
            "--uts",
            "--",
            "sh",
            "-c",
            "hostname spacer-x && hostname",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "spacer-x");
    assert_eq!(nix::unistd::gethostname().unwrap(), host);
}

#[test]
fn subspace_is_owned_by_the_requester_and_so_are_its_rooms() {
    let b = Broker::start(TEST_POLICY);
    let v = b.probe_as(TENANT, TENANT, &["subspace", "--pid", "net", "uts"]);
    assert_eq!(v["owner_uid"], TENANT);
    let uid_map: Vec<&str> = v["uid_map"].as_str().unwrap().split_whitespace().collect();
    assert_eq!(uid_map, vec!["0", &TENANT.to_string(), "1"]);
    let gid_map: Vec<&str> = v["gid_map"].as_str().unwrap().split_whitespace().collect();
    assert_eq!(gid_map, vec!["0", &TENANT.to_string(), "1"]);
    assert_eq!(v["setgroups"], "deny");
    assert!(v["pid_ino"].as_u64().is_some());
    assert_eq!(
        v["pid_owner_userns"], v["user_ino"],
        "the PID namespace is owned by the subspace's user namespace"
    );
    for t in ["net", "uts"] {
        assert_eq!(
            v["rooms"][t]["owner_userns"], v["user_ino"],
            "{t} owned by the subspace"
        );
    }
}

#[test]
fn subspace_worker_runs_as_the_requester_and_is_confined() {
    let b = Broker::start(TEST_POLICY);
    // Keep the subspace open with a long-running command inside it.
    let mut child = spawn_retrying(
        std::process::Command::new(b.copy_bin("spacer"))
            .args(["run", "--user", "--pid", "--", "sleep", "30"])
            .env("SPACER_SOCKET", &b.socket)
            .current_dir(b.dir())
            .uid_gid(TENANT),
    );
    let mut sub = Vec::new();
    let found = eventually(Duration::from_secs(5), || {
        sub = b.subspace_workers();
        !sub.is_empty()
    });
    assert!(found, "no subspace worker under the spawner");
    let pid = sub[0];
    let want = format!("{TENANT}\t{TENANT}\t{TENANT}\t{TENANT}");
    // It finishes setting up (becomes the requester in all ids) right after
    // its parent's Go; the command may already be running.
    // Its ids change a moment before its effective set is lowered: wait
    // for both (on a loaded machine the moment can be seen).
    assert!(
        eventually(Duration::from_secs(2), || status(pid, "Uid") == want
            && status(pid, "CapEff") == "0000000080240000"),
        "{} {}",
        status(pid, "Uid"),
        status(pid, "CapEff")
    );
    assert_eq!(status(pid, "Gid"), want);
    assert_eq!(status(pid, "NoNewPrivs"), "1");
    assert_eq!(status(pid, "Seccomp"), "2");
    // CAP_SYS_ADMIN, CAP_SYS_CHROOT, CAP_SETFCAP, in its own user namespace
    // only; CAP_NET_ADMIN and CAP_SYS_TIME permitted for the room options.
    assert_eq!(status(pid, "CapEff"), "0000000080240000");
    assert_eq!(status(pid, "CapPrm"), "0000000082241000");
    assert_eq!(status(pid, "CapBnd"), "0000000082241000");
    assert_eq!(status(pid, "Groups"), "");
    // Nothing of the service's: its stdio is /dev/null (not the audit log),
    // and its one socket is its channel.
    let fds = fd_links(pid);
    for stdio in ["0 -> /dev/null", "1 -> /dev/null", "2 -> /dev/null"] {
        assert!(fds.iter().any(|l| l == stdio), "{fds:?}");
    }
    assert_eq!(
        fds.iter().filter(|l| l.contains("socket:")).count(),
        1,
        "{fds:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn nested_subspaces_survive_the_middle_closing() {
    let b = Broker::start(TEST_POLICY);
    let v = b.probe_as(TENANT, TENANT, &["nested"]);
    assert_eq!(v["inner_inside_middle"], true);
    assert_eq!(v["middle_exited"], true);
    assert_eq!(v["inner_serves"], true, "{v}");
    let depths = || -> Vec<u64> {
        b.decisions()
            .iter()
            .filter(|d| d["request"] == "rooms")
            .filter_map(|d| d["subspace"]["depth"].as_u64())
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(3), || depths() == vec![2]),
        "the inner rooms request is audited at depth 2: {:?}",
        depths()
    );
}

#[test]
fn closing_conn_ends_and_reaps_the_subspace_worker() {
    let b = Broker::start(TEST_POLICY);
    let v = b.probe_as(TENANT, TENANT, &["close"]);
    assert_eq!(v["exited"], true);
    assert_eq!(v["reaped"], true);
    assert!(eventually(Duration::from_secs(3), || {
        b.events().iter().any(|e| e["event"] == "subspace_closed")
    }));
}

#[test]
fn two_hundred_subspaces_leave_no_fd_behind() {
    let b = Broker::start(TEST_POLICY);
    b.probe_as(TENANT, TENANT, &["many", "1"]);
    let (broker, sup, worker) = (b.pid(), b.supervisor_pid(), b.worker_pid());
    assert!(eventually(Duration::from_secs(3), || children(worker).is_empty()));
    let base = [fd_count(broker), fd_count(sup), fd_count(worker)];
    let v = b.probe_as(TENANT, TENANT, &["many", "200"]);
    assert_eq!(v["made"], 200);
    let settled = eventually(Duration::from_secs(5), || {
        let now = [fd_count(broker), fd_count(sup), fd_count(worker)];
        now.iter().zip(base).all(|(n, b)| *n <= b) && children(worker).is_empty()
    });
    assert!(
        settled,
        "{base:?} -> {:?}; worker children {:?}\n{:?}",
        [fd_count(broker), fd_count(sup), fd_count(worker)],
        children(worker),
        fd_links(broker)
    );
}

#[test]
fn uid_without_user_is_denied() {
    let b = Broker::start(TEST_POLICY);
    let out = b.spacer_as(STRANGER, STRANGER, &["run", "--user", "--", "true"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("spacer: denied: user not allowed by defaults"));
}

#[test]
fn rooms_inside_a_subspace_follow_the_policy() {
    let b = Broker::start(TEST_POLICY);
    let (inner, _sub) = {
        let c = spacer_client::Client::connect(&b.socket).unwrap();
        c.subspace(Spaces::USER).unwrap()
    };
    // The client's own connection is gone; the subspace connection serves on.
    let rooms = inner.rooms(Spaces::NET | Spaces::MNT).unwrap();
    assert!(rooms.net.is_some() && rooms.mnt.is_some());
    // The tenant may not have mnt, inside a subspace or not.
    let out = b.spacer_as(TENANT, TENANT, &["run", "--user", "--mnt", "--", "true"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn pid_subspace_without_user_is_for_root_only() {
    let b = Broker::start(TEST_POLICY);
    let out = b.spacer_as(TENANT, TENANT, &["run", "--pid", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("a PID subspace without a user namespace is for root only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = b.spacer_as(0, 0, &["run", "--pid", "--", "sh", "-c", "echo $$"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
}

#[test]
fn spacer_run_nests_through_its_subspace_up_to_max_depth() {
    // An unprivileged uid: `spacer run --user` inside `spacer run --user`
    // asks the outer subspace (SPACER_FD), gets namespaces it can enter, and
    // a third level is refused by max_depth.
    let b = Broker::start(&format!(
        "[[rule]]\nuid = {TENANT}\nallow = [\"user\", \"net\"]\nmax_depth = 2\n"
    ));
    let spacer = b.copy_bin("spacer");
    let s = spacer.display();
    let out = b.spacer_as(
        TENANT,
        TENANT,
        &[
            "run",
            "--user",
            "--",
            "sh",
            "-c",
            &format!(
                "{s} run --user --net -- sh -c 'id -u; cat /proc/net/dev | tail -n +3 | cut -d: -f1'; \
                 {s} run --user -- {s} run --user -- true; echo third=$?"
            ),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(lines, ["0", "lo", "third=3"], "{err}");
    assert!(err.contains("max_depth 2 reached"), "{err}");
}

#[test]
fn the_broker_wide_subspace_cap_is_its_own_flag() {
    // One connection may hold several subspaces: capping connections in all
    // does not cap subspaces in all; `--max-subspaces` does.
    let b = Broker::start_with(TEST_POLICY, &["--max-connections", "1"]);
    let c = b.client();
    let held: Vec<_> = (0..3)
        .map(|i| {
            c.subspace(Spaces::USER)
                .unwrap_or_else(|e| panic!("subspace {i}: {e}\n{}", b.log_text()))
        })
        .collect();
    assert_eq!(held.len(), 3);
    drop(held);
    drop(c);

    // Of 3 in all, the last is kept for uids with none live.
    let b = Broker::start_with(TEST_POLICY, &["--max-subspaces", "3"]);
    let c = b.client();
    let _first = c.subspace(Spaces::USER).expect("first subspace");
    let _second = c.subspace(Spaces::USER).expect("second subspace");
    match c.subspace(Spaces::USER) {
        Err(spacer_client::Error::Denied(reason)) => {
            assert_eq!(
                reason,
                "the broker's subspace limit 3 is nearly reached (the last 1 are kept for uids with none live)"
            )
        }
        other => panic!("a third subspace: {other:?}"),
    }
    // The record is written once the answer is sent.
    let mut denied = Vec::new();
    eventually(Duration::from_secs(5), || {
        denied = b
            .decisions()
            .into_iter()
            .filter(|d| d["decision"] == "deny")
            .collect();
        !denied.is_empty()
    });
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["request"], "subspace");
}
