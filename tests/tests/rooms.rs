//! Rooms end to end: the real broker and worker, clients as root and as
//! other uids, privileges and fds of the real processes.

use std::os::fd::AsFd;
use std::time::Duration;

use spacer_client::{Error, NsType, Spaces};
use spacer_proto::wire::{decode_reply, ErrorKind, Reply, Request};
use spacer_proto::{fd, Channel, MapChoice};
use spacer_tests::*;

fn raw_call(b: &Broker, bytes: &[u8]) -> Reply {
    let chan = Channel::connect(&b.socket).unwrap();
    raw_call_on(&chan, bytes)
}

fn raw_call_on(chan: &Channel, bytes: &[u8]) -> Reply {
    chan.send(bytes, &[]).unwrap();
    let mut buf = vec![0u8; 4096];
    let got = chan.recv(&mut buf, 8).unwrap().expect("a response");
    decode_reply(&buf[..got.len], got.fds).expect("a valid response")
}

fn error_of(r: Reply) -> (ErrorKind, String) {
    match r {
        Reply::Error { kind, reason } => (kind, reason),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn root_gets_all_six_namespaces_each_new() {
    let b = Broker::start(TEST_POLICY);
    let rooms = b.client().rooms(Spaces::ROOMS).unwrap();
    for t in Spaces::ROOMS.types() {
        let f = rooms.get(t).unwrap_or_else(|| panic!("{t} missing"));
        assert_eq!(fd::namespace_type(f.as_fd()).unwrap(), t);
        assert_ne!(
            fd::namespace_inode(f.as_fd()).unwrap(),
            my_ns_inode(t.name()),
            "{t} is the caller's own"
        );
    }
}

#[test]
fn new_mount_namespace_is_private() {
    // Started where every mount is shared, as on a systemd host: a copy of
    // that would join the same peer groups unless made private.
    let b = Broker::start_wrapped(
        TEST_POLICY,
        &[],
        &["unshare", "--mount", "--propagation", "shared", "--"],
    );
    let home = std::fs::read_to_string(format!("/proc/{}/mountinfo", b.pid())).unwrap();
    assert!(home.contains("shared:"), "{home}");
    let out = b.spacer_as(0, 0, &["run", "--mnt", "--", "cat", "/proc/self/mountinfo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(info.lines().count() > 1);
    // Private propagation both ways: no shared: or master: peer group tags.
    for line in info.lines() {
        assert!(
            !line.contains("shared:") && !line.contains("master:"),
            "{line}"
        );
    }
}

#[test]
fn tenant_gets_net_and_is_denied_mnt() {
    let b = Broker::start(TEST_POLICY);
    let out = b.spacer_as(TENANT, TENANT, &["rooms", "--net", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["net"].as_u64().unwrap() > 0);
    assert_eq!(v.as_object().unwrap().len(), 1);

    let out = b.spacer_as(TENANT, TENANT, &["rooms", "--mnt"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "spacer: denied: mnt not allowed by rule 2 (\"tenant\")"
    );
    // One type missing denies the whole request: nothing partial.
    let out = b.spacer_as(TENANT, TENANT, &["rooms", "--net", "--mnt"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
}

#[test]
fn unknown_uid_is_denied_by_defaults() {
    let b = Broker::start(TEST_POLICY);
    let out = b.spacer_as(STRANGER, STRANGER, &["rooms", "--uts"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "spacer: denied: uts not allowed by defaults"
    );
    assert!(eventually(Duration::from_secs(3), || !b
        .decisions()
        .is_empty()));
    let deny = b
        .decisions()
        .into_iter()
        .find(|d| d["decision"] == "deny")
        .expect("a deny event");
    assert_eq!(deny["uid"], STRANGER);
    assert_eq!(deny["gid"], STRANGER);
    assert_eq!(deny["rule"], "defaults");
    assert_eq!(deny["request"], "rooms");
    assert_eq!(deny["spaces"], serde_json::json!(["uts"]));
    assert_eq!(deny["reason"], "uts not allowed by defaults");
    assert!(deny["namespaces"].is_null());
}

#[test]
fn library_errors_separate_denied_from_invalid() {
    let b = Broker::start("[defaults]\nallow = []\n");
    let c = b.client();
    assert!(
        matches!(c.rooms(Spaces::NET), Err(Error::Denied(r)) if r == "net not allowed by defaults")
    );
    assert!(
        matches!(c.rooms(Spaces::empty()), Err(Error::Invalid(r)) if r == "no space requested")
    );
    assert!(matches!(c.rooms(Spaces::USER), Err(Error::Invalid(r)) if r == "out of space"));
}

#[test]
fn broker_runs_without_privileges() {
    let b = Broker::start(TEST_POLICY);
    let pid = b.pid();
    let uid = status(pid, "Uid");
    assert!(
        !uid.starts_with("0\t") && !uid.contains("\t0\t"),
        "broker uids: {uid}"
    );
    assert_eq!(status(pid, "CapEff"), "0000000000000000");
    assert_eq!(status(pid, "CapPrm"), "0000000000000000");
    assert_eq!(status(pid, "CapBnd"), "0000000000000000");
    assert_eq!(status(pid, "CapAmb"), "0000000000000000");
    assert_eq!(status(pid, "NoNewPrivs"), "1");
    assert!(b
        .events()
        .iter()
        .any(|e| e["event"] == "privileges_dropped"));
}

#[test]
fn worker_is_confined() {
    let b = Broker::start(TEST_POLICY);
    for pid in [b.supervisor_pid(), b.worker_pid()] {
        assert_eq!(status(pid, "NoNewPrivs"), "1");
        assert_eq!(status(pid, "Seccomp"), "2");
        // Effective: CAP_SYS_ADMIN, CAP_SYS_CHROOT, CAP_SETUID, CAP_SETGID.
        let eff = u64::from_str_radix(&status(pid, "CapEff"), 16).unwrap();
        assert_ne!(eff & (1 << 21), 0, "CAP_SYS_ADMIN");
        assert_eq!(eff, (1 << 21) | (1 << 18) | (1 << 7) | (1 << 6), "{eff:x}");
        // Permitted and bounding add only CAP_SETFCAP (raised only by a new
        // subspace worker that maps uid 0), CAP_NET_ADMIN and CAP_SYS_TIME
        // (raised only for the loopback and time-offsets room options).
        assert_eq!(status(pid, "CapPrm"), "00000000822c10e0");
        assert_eq!(status(pid, "CapBnd"), "00000000822c10e0");
        assert_eq!(status(pid, "CapInh"), "0000000000000000");
        assert_eq!(status(pid, "CapAmb"), "0000000000000000");
        // Only stdio and its channel (the serving worker also holds its own
        // pidfd and the six namespaces it returns to).
        let fds = fd_links(pid);
        assert!(
            fds.iter().filter(|l| l.contains("socket:")).count() == 1,
            "{fds:?}"
        );
    }
}

#[test]
fn hundreds_of_requests_leave_no_trace() {
    let b = Broker::start(TEST_POLICY);
    let c = b.client();
    c.rooms(Spaces::UTS).unwrap();
    let (broker, sup, worker) = (b.pid(), b.supervisor_pid(), b.worker_pid());
    let ns_before = ns_links(worker);
    let base = [fd_count(broker), fd_count(sup), fd_count(worker)];
    for i in 0..300 {
        let spaces = match i % 5 {
            0 => Spaces::ROOMS,
            1 => Spaces::NET,
            2 => Spaces::MNT | Spaces::TIME,
            3 => Spaces::UTS | Spaces::IPC | Spaces::CGROUP,
            _ => Spaces::USER, // invalid for rooms: refused by the broker
        };
        let r = c.rooms(spaces);
        assert_eq!(r.is_ok(), i % 5 != 4, "{i}: {r:?}");
    }
    // Another uid, denied, many times.
    for _ in 0..20 {
        let out = b.spacer_as(STRANGER, STRANGER, &["rooms", "--net"]);
        assert_eq!(out.status.code(), Some(3));
    }
    assert_eq!(
        ns_links(worker),
        ns_before,
        "the worker's own namespaces changed"
    );
    let settled = eventually(Duration::from_secs(3), || {
        let now = [fd_count(broker), fd_count(sup), fd_count(worker)];
        now.iter().zip(base).all(|(n, b)| *n <= b)
    });
    assert!(
        settled,
        "fds grew: {base:?} -> {:?}\nbroker: {:?}\nworker: {:?}",
        [fd_count(broker), fd_count(sup), fd_count(worker)],
        fd_links(broker),
        fd_links(worker)
    );
}

#[test]
fn audit_log_records_allow_with_inodes() {
    let b = Broker::start(TEST_POLICY);
    let c = b.client();
    let rooms = c.rooms(Spaces::NET | Spaces::TIME).unwrap();
    let net = fd::namespace_inode(rooms.net.as_ref().unwrap().as_fd()).unwrap();
    let time = fd::namespace_inode(rooms.time.as_ref().unwrap().as_fd()).unwrap();
    assert!(eventually(Duration::from_secs(3), || !b
        .decisions()
        .is_empty()));
    let allow = b
        .decisions()
        .into_iter()
        .find(|d| d["decision"] == "allow")
        .expect("an allow event");
    assert_eq!(allow["namespaces"]["net"], net);
    assert_eq!(allow["namespaces"]["time"], time);
    assert_eq!(allow["uid"], 0);
    assert_eq!(allow["rule"], 1);
    assert_eq!(allow["rule_name"], "root");
    assert_eq!(allow["delivered"], true);
    assert_eq!(allow["pidfd"], true);
    assert!(allow["duration_us"].as_u64().is_some());
    assert_eq!(allow["pid"], std::process::id());
    // One event per request: a connection's next request is read only once
    // the last one is answered and recorded, so when the next one's record
    // is there, every record of the first is too.
    drop(c.rooms(Spaces::UTS).unwrap());
    assert!(eventually(Duration::from_secs(3), || b.decisions().len() >= 2));
    let d = b.decisions();
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(d[1]["spaces"], serde_json::json!(["uts"]));
}

#[test]
fn bad_requests_get_stable_reasons_and_the_connection_stays_usable() {
    let b = Broker::start(TEST_POLICY);
    let chan = Channel::connect(&b.socket).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Request::rooms(0).encode(), "no space requested"),
        (Request::rooms(Spaces::PID.bits()).encode(), "out of space"),
        // Two requests in one datagram: refused whole, none dropped silently.
        (
            [
                Request::rooms(Spaces::UTS.bits()).encode(),
                Request::rooms(Spaces::UTS.bits()).encode(),
            ]
            .concat(),
            "trailing bytes after the request",
        ),
        (
            Request::rooms(libc::CLONE_THREAD as u64 | Spaces::NET.bits()).encode(),
            "out of space",
        ),
        (
            Request::Subspace {
                spaces: 0,
                map: MapChoice::Root,
            }
            .encode(),
            "no space requested",
        ),
        (
            Request::Subspace {
                spaces: Spaces::NET.bits(),
                map: MapChoice::Root,
            }
            .encode(),
            "out of space",
        ),
        (
            Request::Subspace {
                spaces: (Spaces::USER | Spaces::UTS).bits(),
                map: MapChoice::Root,
            }
            .encode(),
            "out of space",
        ),
        // {"v": 1, "op": "moin", "spaces": 0}
        (
            [
                &[0x83, 0xa1, b'v', 1, 0xa2, b'o', b'p', 0xa4][..],
                b"moin",
                &[0xa6],
                b"spaces",
                &[0],
            ]
            .concat(),
            "unknown request",
        ),
        // {"v": 2, ...}
        (
            [
                &[0x83, 0xa1, b'v', 2, 0xa2, b'o', b'p', 0xa5][..],
                b"rooms",
                &[0xa6],
                b"spaces",
                &[0x40],
            ]
            .concat(),
            "unsupported protocol version 2 (this side speaks 1)",
        ),
        // {"v": 1, "op": "ping"}: no spaces, so not even an unknown request.
        (
            [&[0x82, 0xa1, b'v', 1, 0xa2, b'o', b'p', 0xa4][..], b"ping"].concat(),
            "malformed request",
        ),
        (b"garbage".to_vec(), "malformed request"),
        (Vec::new(), "malformed request"),
    ];
    for (bytes, reason) in &cases {
        let (kind, got) = error_of(raw_call_on(&chan, bytes));
        assert_eq!(kind, ErrorKind::Invalid);
        assert_eq!(&got, reason);
    }
    // Still usable: a valid request on the same connection succeeds.
    match raw_call_on(&chan, &Request::rooms(Spaces::UTS.bits()).encode()) {
        Reply::Rooms(r) => assert!(r.uts.is_some()),
        other => panic!("{other:?}"),
    }
    // The audit record is written right after the response is sent.
    assert!(eventually(Duration::from_secs(3), || b.decisions().len()
        == cases.len() + 1));
    let _ = raw_call(&b, &Request::rooms(Spaces::UTS.bits()).encode());
}

#[test]
fn typo_in_policy_is_refused_with_its_line() {
    let (code, log) = Broker::refuses("[[rule]]\nuid = 0\n\nalow = [\"net\"]\n", 0o644);
    assert_eq!(code, Some(1));
    assert!(
        log.contains("policy.toml:4:1: unknown field `alow`"),
        "{log}"
    );
}

#[test]
fn unknown_type_in_policy_is_refused_with_its_line_and_column() {
    let (code, log) = Broker::refuses("[defaults]\nallow = [\"net\", \"nett\"]\n", 0o644);
    assert_eq!(code, Some(1));
    assert!(
        log.contains("policy.toml:2:17: unknown namespace type"),
        "{log}"
    );
}

#[test]
fn namespace_types_are_named_in_order() {
    assert_eq!(
        Spaces::ROOMS.types().collect::<Vec<_>>(),
        vec![
            NsType::Cgroup,
            NsType::Ipc,
            NsType::Mnt,
            NsType::Net,
            NsType::Time,
            NsType::Uts
        ]
    );
}

#[test]
fn a_command_run_in_rooms_or_a_subspace_inherits_no_fd_from_spacer() {
    // Every fd the library holds (the connection, namespace fds, pidfds) is
    // close-on-exec: the command sees what it would see started directly,
    // and in a subspace one more: its connection, named by SPACER_FD.
    let b = Broker::start(TEST_POLICY);
    let fds_of = |out: std::process::Output| -> Vec<String> {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    };
    let direct = fds_of(
        std::process::Command::new("ls")
            .arg("/proc/self/fd")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap(),
    );
    for rooms in [
        &["--net", "--uts"][..],
        &["--time", "--mnt", "--ipc", "--cgroup"],
    ] {
        let mut args = vec!["run"];
        args.extend_from_slice(rooms);
        args.extend_from_slice(&["--", "ls", "/proc/self/fd"]);
        assert_eq!(fds_of(b.spacer_as(0, 0, &args)), direct, "{rooms:?}");
    }
    let out = b.spacer_as(
        0,
        0,
        &[
            "run",
            "--user",
            "--pid",
            "--net",
            "--",
            "sh",
            "-c",
            "ls /proc/self/fd; echo conn=$SPACER_FD",
        ],
    );
    let mut seen = fds_of(out);
    let conn = seen
        .iter()
        .position(|l| l.starts_with("conn="))
        .map(|i| seen.remove(i))
        .unwrap();
    let n = conn.trim_start_matches("conn=").to_owned();
    let i = seen
        .iter()
        .position(|f| *f == n)
        .expect("SPACER_FD is open");
    seen.remove(i);
    // (sh's own listing has one fd more than ls's: the directory it reads
    // through is the same, the shell adds none.)
    assert_eq!(seen, direct);
}

#[test]
fn rooms_from_the_pool_never_land_in_a_tenants_subspace() {
    // A tenant's subspace worker serves only that tenant's subspace
    // connection: rooms asked for on the broker's own socket, while such
    // subspaces live, are made by the host worker and owned by the host's
    // user namespace.
    let b = Broker::start(TEST_POLICY);
    let host_user = my_ns_inode("user");
    let holder = b.client();
    let (_inside, sub) = holder.subspace(Spaces::USER).unwrap();
    let sub_user = fd::namespace_inode(sub.user.as_ref().unwrap().as_fd()).unwrap();
    assert_ne!(sub_user, host_user);
    let other = b.client();
    for _ in 0..20 {
        for c in [&holder, &other] {
            let rooms = c.rooms(Spaces::NET | Spaces::UTS).unwrap();
            for f in [rooms.net.as_ref().unwrap(), rooms.uts.as_ref().unwrap()] {
                let owner = fd::owning_user_namespace(f.as_fd()).unwrap();
                assert_eq!(fd::namespace_inode(owner.as_fd()).unwrap(), host_user);
            }
        }
    }
}

#[test]
fn the_audit_names_the_user_and_the_connecting_program() {
    let b = Broker::start(TEST_POLICY);
    let out = b.spacer_as(0, 0, &["rooms", "--uts"]);
    assert!(out.status.success(), "{out:?}");
    let out = b.spacer_as(STRANGER, STRANGER, &["rooms", "--uts"]);
    assert_eq!(out.status.code(), Some(3));
    let mut got = Vec::new();
    assert!(eventually(Duration::from_secs(3), || {
        got = b.decisions();
        got.len() == 2
    }));
    let (allow, deny) = (&got[0], &got[1]);
    assert_eq!(allow["decision"], "allow", "{allow}");
    assert_eq!(allow["user"], "root", "{allow}");
    // The program that connected, read through its pidfd.
    assert_eq!(allow["comm"], "spacer", "{allow}");
    assert_eq!(deny["decision"], "deny", "{deny}");
    assert_eq!(deny["uid"], STRANGER);
    // A uid with no account has no name.
    assert!(deny["user"].is_null(), "{deny}");
    assert_eq!(deny["comm"], "spacer", "{deny}");
    // Numbers are JSON numbers, `defaults` a word.
    assert_eq!(allow["rule"], 1);
    assert_eq!(deny["rule"], "defaults");
    let start = b
        .events()
        .into_iter()
        .find(|e| e["event"] == "start")
        .expect("a start event");
    let workers = start["workers"].as_array().expect("workers as a list");
    assert_eq!(workers.len(), 1, "{start}");
    assert_eq!(workers[0], b.worker_pid());
    assert_eq!(start["spawner"][0], b.spawner_pid(), "{start}");
}
