//! Room options end to end: `lo` up, host and domain names, clock offsets,
//! applied by the real worker before the namespaces are handed out; checked
//! by the broker and the worker before anything is created; allowed or
//! denied by policy; the same through a subspace for an unprivileged uid.

use std::time::Duration;

use spacer_client::{Error, Offset, RoomOptions, Spaces};
use spacer_tests::*;

/// Root: everything. TENANT: rooms and subspaces with every option.
/// STRANGER: net, uts and user subspaces, but only the loopback option.
const POLICY: &str = r#"
[[rule]]
name = "root"
uid = 0
allow = ["cgroup", "ipc", "mnt", "net", "time", "uts", "user", "pid"]
options = ["loopback", "hostname", "time-offsets"]

[[rule]]
name = "tenant"
uid = 4343
allow = ["net", "uts", "time", "user", "pid"]
options = ["loopback", "hostname", "time-offsets"]

[[rule]]
name = "stranger"
uid = 4242
allow = ["net", "uts", "user"]
options = ["loopback"]
"#;

fn run(b: &Broker, uid: u32, args: &[&str]) -> (Option<i32>, String, String) {
    let out = b.spacer_as(uid, uid, args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The flags `ip -o link show lo` prints, e.g. `LOOPBACK,UP,LOWER_UP`.
fn lo_flags(ip_output: &str) -> Vec<String> {
    let start = ip_output.find('<').expect("flags") + 1;
    let end = ip_output.find('>').expect("flags");
    ip_output[start..end]
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn clocks_here() -> (f64, f64) {
    let secs = |c| {
        let t = nix::time::clock_gettime(c).unwrap();
        t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
    };
    (
        secs(nix::time::ClockId::CLOCK_MONOTONIC),
        secs(nix::time::ClockId::CLOCK_BOOTTIME),
    )
}

#[test]
fn loopback_is_up_only_when_asked() {
    let b = Broker::start(POLICY);
    let (code, up, err) = run(
        &b,
        0,
        &[
            "run",
            "--net",
            "--loopback",
            "--",
            "ip",
            "-o",
            "link",
            "show",
            "lo",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(lo_flags(&up).contains(&"UP".to_owned()), "{up}");
    let (code, down, err) = run(
        &b,
        0,
        &["run", "--net", "--", "ip", "-o", "link", "show", "lo"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(!lo_flags(&down).contains(&"UP".to_owned()), "{down}");
}

#[test]
fn host_and_domain_names_are_set_and_the_host_keeps_its_own() {
    let b = Broker::start(POLICY);
    let host = nix::unistd::gethostname().unwrap();
    let (code, out, err) = run(
        &b,
        0,
        &[
            "run",
            "--uts",
            "--hostname",
            "box",
            "--domainname",
            "lab.example",
            "--",
            "sh",
            "-c",
            "hostname; domainname",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "box\nlab.example\n");
    assert_eq!(nix::unistd::gethostname().unwrap(), host);
    let (_, host_domain, _) = run(&b, 0, &["run", "--uts", "--", "domainname"]);
    assert_ne!(host_domain, "lab.example\n");
}

#[test]
fn boottime_offset_shows_in_proc_uptime() {
    let b = Broker::start(POLICY);
    let before = uptime();
    let (code, out, err) = run(
        &b,
        0,
        &[
            "run",
            "--time",
            "--boottime",
            "86400",
            "--",
            "cat",
            "/proc/uptime",
        ],
    );
    let after = uptime();
    assert_eq!(code, Some(0), "{err}");
    let inside: f64 = out.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        inside >= before + 86400.0 && inside <= after + 86400.0 + 1.0,
        "host {before}..{after}, inside {inside}"
    );
}

#[test]
fn monotonic_offset_shows_in_clock_gettime_and_fractions_count() {
    let b = Broker::start(POLICY);
    let probe = b.copy_bin("spacer-probe");
    let probe = probe.to_str().unwrap();
    let (mono0, boot0) = clocks_here();
    let (code, out, err) = run(
        &b,
        0,
        &[
            "run",
            "--time",
            "--monotonic",
            "1000.5",
            "--",
            probe,
            "clocks",
        ],
    );
    let (mono1, _) = clocks_here();
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let mono = v["monotonic"].as_f64().unwrap();
    let boot = v["boottime"].as_f64().unwrap();
    assert!(
        mono >= mono0 + 1000.5 && mono <= mono1 + 1000.5 + 1.0,
        "host {mono0}..{mono1}, inside {mono}"
    );
    // Only the clock asked for moves.
    assert!(boot < boot0 + 1000.0, "boottime {boot0} -> {boot}");
    // Backwards, as far as the clock allows.
    let (code, out, err) = run(
        &b,
        0,
        &[
            "run",
            "--time",
            "--monotonic",
            "-2.25",
            "--",
            probe,
            "clocks",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let mono = v["monotonic"].as_f64().unwrap();
    let (now, _) = clocks_here();
    assert!(
        mono <= now - 2.25 + 0.1 && mono > mono0 - 3.0,
        "{mono} vs {now}"
    );
}

#[test]
fn invalid_options_are_refused_before_anything_is_created() {
    let b = Broker::start(POLICY);
    let c = b.client();
    // Accepting a connection finishes in the background: one answered
    // request first, so that the baseline includes it.
    c.rooms(Spaces::UTS).unwrap();
    let (broker, sup, worker) = (b.pid(), b.supervisor_pid(), b.worker_pid());
    // The worker and the broker close their copies of the room right after
    // sending it (the worker keeps its own UTS namespace, its home).
    let uts_held = |pid| fd_links(pid).iter().filter(|l| l.contains("uts:")).count();
    assert!(eventually(Duration::from_secs(3), || uts_held(broker) == 0
        && uts_held(worker) == 1));
    let base = [fd_count(broker), fd_count(sup), fd_count(worker)];
    let links0 = fd_links(broker);
    let long = format!("{}.{}", "a".repeat(32), "b".repeat(32));
    assert_eq!(long.len(), 65);
    let cases: Vec<(Spaces, RoomOptions, &str)> = vec![
        (
            Spaces::UTS,
            RoomOptions::new().hostname(long.clone()),
            "is 65 bytes long (at most 64)",
        ),
        (
            Spaces::UTS,
            RoomOptions::new().hostname("a\0b"),
            "contains a NUL byte",
        ),
        (
            Spaces::UTS,
            RoomOptions::new().hostname("-bad"),
            "a label may not start or end with '-'",
        ),
        (
            Spaces::UTS,
            RoomOptions::new().domainname("a_b"),
            "invalid domainname",
        ),
        (
            Spaces::UTS,
            RoomOptions::new().hostname(""),
            "invalid hostname: empty",
        ),
        (
            Spaces::TIME,
            RoomOptions::new().boottime_offset(Offset::from_secs(i64::MAX)),
            "invalid boottime offset",
        ),
        (
            Spaces::TIME,
            RoomOptions::new().monotonic_offset(Offset {
                secs: 1,
                nanos: 1_000_000_000,
            }),
            "nanoseconds 1000000000 not below 10^9",
        ),
        // In range for the wire, but the clock would go below zero: the
        // worker reads its clock and refuses before making anything.
        (
            Spaces::TIME | Spaces::NET,
            RoomOptions::new().monotonic_offset(Offset::from_secs(-4_000_000_000)),
            "would set the clock before zero",
        ),
        (
            Spaces::NET,
            RoomOptions::new().hostname("box"),
            "option hostname needs a new uts namespace",
        ),
        (
            Spaces::UTS,
            RoomOptions::new().loopback_up(),
            "option loopback needs a new net namespace",
        ),
    ];
    for (spaces, opts, want) in &cases {
        match c.rooms_with(*spaces, opts) {
            Err(Error::Invalid(reason)) => {
                assert!(reason.contains(want), "{reason:?} lacks {want:?}")
            }
            other => panic!("{opts:?}: {other:?}"),
        }
    }
    // Every refusal is audited, without namespaces, with the options asked for.
    assert!(eventually(Duration::from_secs(3), || b.decisions().len()
        == cases.len() + 1));
    let refused: Vec<Value> = b
        .decisions()
        .into_iter()
        .filter(|d| d["decision"] != "allow")
        .collect();
    assert_eq!(refused.len(), cases.len());
    for d in refused {
        assert_eq!(d["decision"], "error", "{d}");
        assert!(d.get("namespaces").is_none(), "{d}");
        assert!(d["options"].is_object(), "{d}");
    }
    // Nothing was made, so the worker never left its own namespaces and no
    // fd stayed behind anywhere.
    let settled = eventually(Duration::from_secs(3), || {
        [fd_count(broker), fd_count(sup), fd_count(worker)] == base
    });
    assert!(
        settled,
        "fds {base:?} -> {:?}: {:?} -> {:?}",
        [fd_count(broker), fd_count(sup), fd_count(worker)],
        links0,
        fd_links(broker)
    );
    // The command line says the same, and exits 1 (2 for an option without
    // its type, a usage error found before asking).
    let (code, _, err) = run(&b, 0, &["run", "--uts", "--hostname", "-bad", "--", "true"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("invalid hostname: \"-bad\""), "{err}");
    let (code, _, err) = run(&b, 0, &["rooms", "--uts", "--hostname", &long]);
    assert_eq!(code, Some(1));
    assert!(err.contains("65 bytes"), "{err}");
    let (code, _, err) = run(&b, 0, &["rooms", "--time", "--boottime", "5000000000"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("out of range"), "{err}");
    let (code, _, err) = run(&b, 0, &["rooms", "--hostname", "box"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("add --uts"), "{err}");
}

#[test]
fn an_option_the_policy_does_not_allow_is_denied_and_audited() {
    let b = Broker::start(POLICY);
    let (code, _, err) = run(
        &b,
        STRANGER,
        &["run", "--user", "--uts", "--hostname", "x", "--", "true"],
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("denied: option hostname not allowed by rule 3 (\"stranger\")"),
        "{err}"
    );
    // The option it may use works.
    let (code, out, err) = run(
        &b,
        STRANGER,
        &[
            "run",
            "--user",
            "--net",
            "--loopback",
            "--",
            "ip",
            "-o",
            "link",
            "show",
            "lo",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(lo_flags(&out).contains(&"UP".to_owned()), "{out}");
    let denied: Vec<Value> = b
        .decisions()
        .into_iter()
        .filter(|d| d["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["options"]["hostname"], "x");
    assert_eq!(denied[0]["subspace"]["depth"], 1);
}

#[test]
fn every_option_through_a_subspace_for_an_unprivileged_uid() {
    let b = Broker::start(POLICY);
    let probe = b.copy_bin("spacer-probe");
    let script = format!(
        "ip -o link show lo; hostname; domainname; cut -d' ' -f1 /proc/uptime; {} clocks",
        probe.display()
    );
    let (sup, worker) = (b.supervisor_pid(), b.worker_pid());
    let base = [fd_count(b.pid()), fd_count(sup), fd_count(worker)];
    let (mono0, _) = clocks_here();
    let before = uptime();
    let (code, out, err) = run(
        &b,
        TENANT,
        &[
            "run",
            "--user",
            "--net",
            "--uts",
            "--time",
            "--loopback",
            "--hostname",
            "inner",
            "--domainname",
            "tenant.example",
            "--boottime",
            "86400",
            "--monotonic",
            "3600",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    assert_eq!(code, Some(0), "{err}\n{}", b.log_text());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lo_flags(lines[0]).contains(&"UP".to_owned()), "{out}");
    assert_eq!(lines[1], "inner");
    assert_eq!(lines[2], "tenant.example");
    let up: f64 = lines[3].parse().unwrap();
    assert!(
        up >= before + 86400.0 && up < uptime() + 86401.0,
        "{up} vs {before}"
    );
    let v: Value = serde_json::from_str(lines[4]).unwrap();
    let mono = v["monotonic"].as_f64().unwrap();
    assert!(
        mono >= mono0 + 3600.0 && mono < clocks_here().0 + 3601.0,
        "{mono}"
    );
    // Made by the subspace worker (depth 1), recorded with the options.
    let d = b
        .decisions()
        .into_iter()
        .find(|d| d["request"] == "rooms")
        .expect("a rooms decision");
    assert_eq!(d["decision"], "allow", "{d}");
    assert_eq!(d["uid"], TENANT);
    assert_eq!(d["subspace"]["depth"], 1, "{d}");
    assert_eq!(d["options"]["loopback_up"], true);
    assert_eq!(d["options"]["hostname"], "inner");
    assert_eq!(d["options"]["boottime_offset"], "86400");
    assert_eq!(d["options"]["monotonic_offset"], "3600");
    // The subspace is gone with the command; nothing stayed behind.
    let settled = eventually(Duration::from_secs(5), || {
        [fd_count(b.pid()), fd_count(sup), fd_count(worker)] == base && children(worker).is_empty()
    });
    assert!(
        settled,
        "fds {base:?} -> {:?}, children {:?}",
        [fd_count(b.pid()), fd_count(sup), fd_count(worker)],
        children(worker)
    );
}

#[test]
fn private_mode_applies_options_too() {
    need_root();
    let c = spacer_client::Client::private_with(&bin("spacer-private-worker")).unwrap();
    let rooms = c
        .rooms_with(
            Spaces::UTS | Spaces::NET,
            &RoomOptions::new().hostname("private").loopback_up(),
        )
        .unwrap();
    let name = spacer_client::run_in(&rooms, || nix::unistd::gethostname().unwrap()).unwrap();
    assert_eq!(name, "private");
    match c.rooms_with(Spaces::UTS, &RoomOptions::new().hostname("-x")) {
        Err(Error::Invalid(r)) => assert!(r.contains("label"), "{r}"),
        other => panic!("{other:?}"),
    }
    // Through a subspace of the private worker (which writes its own maps
    // and opens its offsets file in the same step), twice.
    use spacer_client::{CommandExt, Join};
    let (inside, sub) = c.subspace(Spaces::USER).unwrap();
    for secs in [70, 140] {
        let (mono0, _) = clocks_here();
        let rooms = inside
            .rooms_with(
                Spaces::TIME,
                &RoomOptions::new().monotonic_offset(Offset::from_secs(secs)),
            )
            .unwrap();
        let out = std::process::Command::new(bin("spacer-probe"))
            .arg("clocks")
            .join(Join::new().subspace(&sub).unwrap().rooms(&rooms).unwrap())
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        let mono = v["monotonic"].as_f64().unwrap();
        let want = mono0 + secs as f64;
        assert!(
            mono >= want && mono < clocks_here().0 + secs as f64 + 1.0,
            "{mono} vs {want}"
        );
    }
}

#[test]
fn a_request_with_bad_types_is_audited_with_the_options_it_carried() {
    use spacer_proto::wire::{decode_reply, ErrorKind, Reply, Request};
    use spacer_proto::Channel;
    let b = Broker::start(POLICY);
    let chan = Channel::connect(&b.socket).unwrap();
    // Rooms cannot include a user namespace: refused before any policy.
    let req = Request::Rooms {
        spaces: (Spaces::USER | Spaces::UTS).bits(),
        options: RoomOptions::new().hostname("box"),
    };
    chan.send(&req.encode(), &[]).unwrap();
    let mut buf = vec![0u8; 4096];
    let got = chan.recv(&mut buf, 8).unwrap().expect("a reply");
    match decode_reply(&buf[..got.len], got.fds) {
        Ok(Reply::Error {
            kind: ErrorKind::Invalid,
            reason,
        }) => assert!(reason.contains("out of space"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(eventually(Duration::from_secs(3), || !b
        .decisions()
        .is_empty()));
    let d = &b.decisions()[0];
    assert_eq!(d["decision"], "error", "{d}");
    assert_eq!(d["options"]["hostname"], "box", "{d}");
}

#[test]
fn a_subspace_sets_the_offsets_of_each_time_room_it_makes_and_so_does_a_nested_one() {
    // A subspace worker opens its offsets file once, during its setup (as
    // the requester's effective uid at depth 1, or with its own maps when
    // nested), and writes every request's offsets through it.
    let b = Broker::start(POLICY);
    b.copy_bin("spacer-probe");
    let (mono0, _) = clocks_here();
    let v = b.probe_as(
        TENANT,
        TENANT,
        &["time-rooms", "100", "200.5", "nested", "300"],
    );
    let seen: Vec<f64> = v["monotonic"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|m| m.as_f64().unwrap())
        .collect();
    let now = clocks_here().0;
    assert_eq!(seen.len(), 3, "{v}");
    assert!(seen[0] >= mono0 + 100.0 && seen[0] < now + 101.0, "{v}");
    assert!(seen[1] >= mono0 + 200.5 && seen[1] < now + 201.0, "{v}");
    assert!(seen[2] >= mono0 + 300.0 && seen[2] < now + 301.0, "{v}");
    let made: Vec<Value> = b
        .decisions()
        .into_iter()
        .filter(|d| d["request"] == "rooms")
        .collect();
    assert_eq!(made.len(), 3, "{made:?}");
    assert!(made.iter().all(|d| d["decision"] == "allow"), "{made:?}");
    assert_eq!(made[2]["subspace"]["depth"], 2, "{made:?}");
}

#[test]
fn a_root_pid_subspace_sets_the_offsets_of_its_time_rooms_and_serves_on() {
    // Root's PID subspace without a user namespace: its worker stays in the
    // host's user namespace and opens its offsets file during setup, before
    // it narrows its filter (which has no open).
    let b = Broker::start(POLICY);
    let base = b.fd_counts();
    let (conn, sub) = b.client().subspace(Spaces::PID).unwrap();
    for secs in [100, 200] {
        let rooms = conn
            .rooms_with(
                Spaces::TIME,
                &RoomOptions::new().monotonic_offset(Offset::from_secs(secs)),
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", b.log_text()));
        assert!(rooms.time.is_some());
    }
    assert!(conn.rooms(Spaces::UTS).is_ok(), "still serving");
    drop((conn, sub));
    assert!(eventually(Duration::from_secs(5), || b
        .subspace_workers()
        .is_empty()));
    b.assert_fds_back_to(&base);
}
