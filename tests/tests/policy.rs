//! Policy end to end: limits, reload, and the file checks, against the real
//! broker.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use spacer_tests::*;

fn policy_with(tenant_extra: &str) -> String {
    format!(
        r#"
[[rule]]
name = "root"
uid = 0
allow = ["cgroup", "ipc", "mnt", "net", "time", "uts", "user", "pid"]

[[rule]]
name = "tenant"
uid = {TENANT}
allow = ["uts", "user", "pid"]
{tenant_extra}

[[rule]]
name = "other"
uid = {STRANGER}
allow = ["uts"]
requests_per_minute = 100
"#
    )
}

fn outcomes(v: &Value) -> Vec<String> {
    v["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn rate_limit_denies_the_sixth_request_and_spares_other_uids() {
    let b = Broker::start(&policy_with("requests_per_minute = 5"));
    // Requests that policy denies anyway are not charged.
    for _ in 0..3 {
        let v = b.probe_as(TENANT, TENANT, &["rooms", "net"]);
        assert_eq!(
            v["outcome"],
            "denied: net not allowed by rule 2 (\"tenant\")"
        );
    }
    let v = b.probe_as(TENANT, TENANT, &["conns", "6"]);
    assert_eq!(
        outcomes(&v),
        vec![
            "ok",
            "ok",
            "ok",
            "ok",
            "ok",
            "denied: requests_per_minute 5 reached (rule 2 (\"tenant\"))"
        ]
    );
    // Another uid has its own budget.
    let v = b.probe_as(STRANGER, STRANGER, &["conns", "3"]);
    assert_eq!(outcomes(&v), vec!["ok", "ok", "ok"]);
    // The CLI says so with exit status 3.
    let out = b.spacer_as(TENANT, TENANT, &["rooms", "--uts"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("requests_per_minute 5 reached"));
    assert!(eventually(Duration::from_secs(3), || b
        .decisions()
        .iter()
        .any(
            |d| d["reason"] == "requests_per_minute 5 reached (rule 2 (\"tenant\"))"
        )));
}

#[test]
fn two_requests_at_limit_minus_one_let_exactly_one_through() {
    let b = Broker::start(&policy_with("requests_per_minute = 3"));
    let v = b.probe_as(TENANT, TENANT, &["conns", "2"]);
    assert_eq!(outcomes(&v), vec!["ok", "ok"]);
    let v = b.probe_as(TENANT, TENANT, &["race"]);
    let got = outcomes(&v);
    assert_eq!(got.iter().filter(|o| *o == "ok").count(), 1, "{got:?}");
    assert_eq!(
        got.iter()
            .filter(|o| o.contains("requests_per_minute 3 reached"))
            .count(),
        1,
        "{got:?}"
    );
}

#[test]
fn connection_cap_holds() {
    let b = Broker::start(&policy_with("max_connections = 2"));
    let v = b.probe_as(TENANT, TENANT, &["conns", "3"]);
    assert_eq!(
        outcomes(&v),
        vec!["ok", "ok", "denied: max_connections 2 reached"]
    );
    // Once they are closed, new connections are admitted again.
    assert!(eventually(Duration::from_secs(3), || {
        outcomes(&b.probe_as(TENANT, TENANT, &["conns", "2"])) == vec!["ok", "ok"]
    }));
    // A refused connection is audited.
    assert!(b
        .events()
        .iter()
        .any(|e| e["message"] == "connection refused" && e["uid"] == TENANT));
}

#[test]
fn subspace_cap_holds_and_is_released_when_one_closes() {
    let b = Broker::start(&policy_with("max_subspaces = 2"));
    let v = b.probe_as(TENANT, TENANT, &["subspaces", "3"]);
    assert_eq!(
        outcomes(&v),
        vec![
            "ok",
            "ok",
            "denied: max_subspaces 2 reached (rule 2 (\"tenant\"))"
        ]
    );
    assert_eq!(v["after_close"], "ok");
}

#[test]
fn depth_cap_holds() {
    let b = Broker::start(&policy_with("max_depth = 2"));
    let v = b.probe_as(TENANT, TENANT, &["depth", "5"]);
    assert_eq!(v["reached"], 2);
    assert_eq!(
        v["refusal"],
        "denied: max_depth 2 reached (rule 2 (\"tenant\"))"
    );
}

fn write_policy(b: &Broker, text: &str) {
    let p = b.dir().join("policy.toml");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn hup(b: &Broker) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}

#[test]
fn reload_applies_a_good_file_and_keeps_the_old_policy_on_a_bad_one() {
    let b = Broker::start(&policy_with(""));
    let v = b.probe_as(TENANT, TENANT, &["rooms", "net"]);
    assert!(v["outcome"].as_str().unwrap().starts_with("denied"));

    write_policy(
        &b,
        &policy_with("").replace(
            r#"allow = ["uts", "user", "pid"]"#,
            r#"allow = ["uts", "user", "pid", "net"]"#,
        ),
    );
    hup(&b);
    assert!(eventually(Duration::from_secs(3), || b
        .events()
        .iter()
        .any(|e| e["event"] == "policy_reloaded")));
    let v = b.probe_as(TENANT, TENANT, &["rooms", "net"]);
    assert_eq!(v["outcome"], "ok");
    let reloaded = b
        .events()
        .into_iter()
        .find(|e| e["event"] == "policy_reloaded")
        .unwrap();
    assert_eq!(reloaded["policy_sha256"].as_str().unwrap().len(), 64);
    assert!(reloaded["policy"]
        .as_str()
        .unwrap()
        .ends_with("policy.toml"));

    write_policy(&b, "[[rule]]\nuid = 0\nallow = [\"nett\"]\n");
    hup(&b);
    assert!(eventually(Duration::from_secs(3), || b
        .events()
        .iter()
        .any(|e| e["event"] == "policy_reload_failed")));
    let failed = b
        .events()
        .into_iter()
        .find(|e| e["event"] == "policy_reload_failed")
        .unwrap();
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("policy.toml:3:10: unknown namespace type \"nett\""),
        "{failed}"
    );
    // The old (second) policy is still in force, and the broker still serves.
    let v = b.probe_as(TENANT, TENANT, &["rooms", "net"]);
    assert_eq!(v["outcome"], "ok");
}

#[test]
fn counters_survive_a_reload() {
    let b = Broker::start(&policy_with("requests_per_minute = 3"));
    assert_eq!(
        outcomes(&b.probe_as(TENANT, TENANT, &["conns", "2"])),
        vec!["ok", "ok"]
    );
    write_policy(
        &b,
        &format!("# reloaded\n{}", policy_with("requests_per_minute = 3")),
    );
    hup(&b);
    assert!(eventually(Duration::from_secs(3), || b
        .events()
        .iter()
        .any(|e| e["event"] == "policy_reloaded")));
    assert_eq!(
        outcomes(&b.probe_as(TENANT, TENANT, &["conns", "2"])),
        vec![
            "ok",
            "denied: requests_per_minute 3 reached (rule 2 (\"tenant\"))"
        ]
    );
}

#[test]
fn unsafe_policy_files_are_refused_saying_why() {
    let text = policy_with("");
    let (code, log) = Broker::refuses(&text, 0o664);
    assert_eq!(code, Some(1));
    assert!(
        log.contains("is writable by its group (mode 0664); it must be owned by root"),
        "{log}"
    );
    let (code, log) = Broker::refuses(&text, 0o646);
    assert_eq!(code, Some(1));
    assert!(log.contains("is writable by others (mode 0646)"), "{log}");
}

#[test]
fn policy_not_owned_by_root_is_refused() {
    need_root();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.toml");
    std::fs::write(&p, policy_with("")).unwrap();
    nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(STRANGER)), None).unwrap();
    let out = std::process::Command::new(bin("spacer-broker"))
        .arg("--policy")
        .arg(&p)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&format!("is owned by uid {STRANGER}")),
        "{log}"
    );
}

#[test]
fn each_kind_of_bad_file_stops_the_broker_at_its_line() {
    let cases = [
        (
            "[[rule]]\nuid = 0\nallow = [\"net\", \"net\"]\n",
            ":3:17: net is listed twice",
        ),
        (
            "[[rule]]\nallow = [\"net\"]\n",
            ":1:1: this rule has no matcher",
        ),
        (
            "[[rule]]\nuid = 0\ngid = 0\n",
            ":3:7: this rule has two matchers (uid and gid)",
        ),
        (
            "[[rule]]\nuser = \"no-such-user-here\"\n",
            ":2:8: unknown user \"no-such-user-here\"",
        ),
        (
            "[[rule]]\nuid = 0\nmax_subspaces = -1\n",
            ":3:17: max_subspaces must be from 0 to 65536",
        ),
        (
            "[[rule]]\nuid = 0\nrequests_per_minute = 99999999\n",
            ":3:23: requests_per_minute must be from 0 to 1000000",
        ),
        ("[defaults]\nalow = []\n", ":2:1: unknown field `alow`"),
    ];
    for (text, want) in cases {
        let (code, log) = Broker::refuses(text, 0o644);
        assert_eq!(code, Some(1), "{text}");
        assert!(log.contains(want), "{text:?}: {log}");
    }
}

#[test]
fn a_group_rule_matches_a_supplementary_group_of_the_peer() {
    // Groups come from SO_PEERGROUPS at connect: a rule for a supplementary
    // group decides for its members, first match wins, and the same uid
    // without that group falls to the next rule.
    let b = Broker::start(
        r#"
[[rule]]
name = "quarantine"
gid = 4545
allow = []

[[rule]]
name = "users"
uid = 4646
allow = ["net"]
"#,
    );
    let spacer = b.copy_bin("spacer");
    let run = |groups: &str| {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid", "4646", "--regid", "4646"])
            .args(if groups.is_empty() {
                vec!["--clear-groups".to_owned()]
            } else {
                vec!["--groups".to_owned(), groups.to_owned()]
            })
            .arg(&spacer)
            .args(["rooms", "--net"])
            .env("SPACER_SOCKET", &b.socket)
            .current_dir(b.dir())
            .output()
            .expect("setpriv (util-linux)");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run("4545");
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("rule 1 (\"quarantine\")"), "{err}");
    let (code, err) = run("");
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run("45450,454");
    assert_eq!(code, Some(0), "lookalike gids never match: {err}");
    assert!(eventually(Duration::from_secs(3), || b.decisions().len() == 3));
    let d = b.decisions();
    assert_eq!(d[0]["groups"], serde_json::json!([4545]), "{}", d[0]);
    assert_eq!(d[0]["rule_name"], "quarantine");
    assert_eq!(d[1]["rule_name"], "users");
}

#[test]
fn policy_explain_without_gid_looks_up_the_users_groups() {
    need_root();
    // A user database of its own, which only the command below sees (bind
    // mounted in a private mount namespace): a user whose supplementary
    // group a rule names.
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let group = dir.path().join("group");
    std::fs::write(
        &passwd,
        std::fs::read_to_string("/etc/passwd").unwrap()
            + "spacer-explain:x:4747:4747::/nonexistent:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(
        &group,
        std::fs::read_to_string("/etc/group").unwrap()
            + "spacer-explain:x:4747:\nspacer-builders:x:4848:spacer-explain\n",
    )
    .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\nname = \"builders\"\ngid = 4848\nallow = [\"net\"]\n",
    )
    .unwrap();
    let explain = |extra: &[&str]| {
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount --bind \"$1\" /etc/passwd && mount --bind \"$2\" /etc/group && \
                 shift 2 && exec \"$@\"",
            )
            .arg("sh")
            .args([&passwd, &group, &bin("spacer")])
            .args(["policy", "explain"])
            .arg(&policy)
            .args(["--uid", "4747"])
            .args(extra)
            .output()
            .expect("unshare (util-linux)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let text = explain(&[]);
    assert!(
        text.contains(
            "uid 4747 is user \"spacer-explain\": groups looked up as a login of that user has \
             them (primary 4747, supplementary 4848)"
        ),
        "{text}"
    );
    assert!(
        text.contains("uid 4747 gids [4747, 4848]: decided by rule 1 (\"builders\")"),
        "{text}"
    );
    // Given gids are taken as they are: no look-up.
    let text = explain(&["--gid", "4747"]);
    assert!(!text.contains("looked up"), "{text}");
    assert!(text.contains("decided by defaults"), "{text}");
    // The host's own database never saw the user.
    assert!(!std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .contains("spacer-explain"));
}
