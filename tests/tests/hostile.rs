//! Hostile clients and faults: each test plays one attack or failure against
//! the real binaries, then checks that the service still answers a
//! well-formed request and that no fd was left behind.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use spacer_client::{Error, Spaces};
use spacer_proto::wire::{decode_reply, ErrorKind, Reply, Request};
use spacer_proto::Channel;
use spacer_tests::*;

fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).unwrap();
}

/// Bytes sent to process `pid` on its sockets that it has not read yet
/// (e.g. a request waiting for a stopped worker): each socket copied out of
/// it (`pidfd_getfd`, root only), asked `FIONREAD` and closed at once.
fn unread_by(pid: i32) -> u64 {
    use rustix::process::{pidfd_getfd, pidfd_open, PidfdFlags, PidfdGetfdFlags};
    let Some(target) = rustix::process::Pid::from_raw(pid) else {
        return 0;
    };
    let (Ok(pidfd), Ok(fds)) = (
        pidfd_open(target, PidfdFlags::empty()),
        std::fs::read_dir(format!("/proc/{pid}/fd")),
    ) else {
        return 0;
    };
    fds.filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter_map(|fd| pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()).ok())
        .map(|sock| rustix::io::ioctl_fionread(&sock).unwrap_or(0))
        .sum()
}

/// The broker still serves, and after a moment no process holds more fds
/// than `base`.
fn still_serving_without_leaks(b: &Broker, base: &[usize]) {
    let c = b.client();
    let rooms = c
        .rooms(Spaces::UTS)
        .expect("a well-formed request is still served");
    assert!(rooms.uts.is_some());
    drop((rooms, c));
    let settled = eventually(Duration::from_secs(5), || {
        let now = b.fd_counts();
        now.len() == base.len() && now.iter().zip(base).all(|(n, b)| n <= b)
    });
    assert!(
        settled,
        "fds grew: {base:?} -> {:?}\nbroker: {:?}",
        b.fd_counts(),
        fd_links(b.pid())
    );
}

/// Baseline after one warm request (the worker's homes and the broker's
/// event loop exist by then).
fn baseline(b: &Broker) -> Vec<usize> {
    drop(b.client().rooms(Spaces::UTS).unwrap());
    std::thread::sleep(Duration::from_millis(50));
    b.fd_counts()
}

fn reply(chan: &Channel) -> Option<Reply> {
    let mut buf = vec![0u8; 4096];
    let got = chan.recv(&mut buf, 8).ok()??;
    decode_reply(&buf[..got.len], got.fds).ok()
}

fn invalid_reason(r: Option<Reply>) -> String {
    match r {
        Some(Reply::Error {
            kind: ErrorKind::Invalid,
            reason,
        }) => reason,
        other => panic!("expected an invalid-request error, got {other:?}"),
    }
}

#[test]
fn worker_killed_with_sigkill_is_replaced_within_a_second() {
    let b = Broker::start(TEST_POLICY);
    let base = baseline(&b);
    let old = b.worker_pid();
    signal(old, Signal::SIGKILL);
    // Dead for sure (a request sent while it still dies fails, as it should).
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::metadata(format!("/proc/{old}")).is_err()
    }));
    let t = Instant::now();
    let c = b.client();
    let r = c.rooms(Spaces::NET);
    let took = t.elapsed();
    assert!(r.is_ok(), "{r:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_ne!(b.worker_pid(), old);
    assert!(b
        .events()
        .iter()
        .any(|e| e["event"] == "worker_exited" && e["pid"] == old));
    drop((r, c));
    still_serving_without_leaks(&b, &base);
}

#[test]
fn request_in_flight_when_the_worker_dies_fails_promptly() {
    let b = Broker::start(TEST_POLICY);
    let base = baseline(&b);
    let w = b.worker_pid();
    signal(w, Signal::SIGSTOP);
    // Stopped for sure before the request is sent: a worker that gets the
    // processor only after the datagram has arrived reads it first, and
    // stops mid-request.
    assert!(eventually(Duration::from_secs(5), || status(w, "State")
        .starts_with('T')));
    let sock = b.socket.clone();
    let t = std::thread::spawn(move || {
        let c = spacer_client::Client::connect(&sock).unwrap();
        let t = Instant::now();
        (c.rooms(Spaces::UTS).map(drop), t.elapsed())
    });
    // In flight: the request waits, unread, on the stopped worker's socket.
    assert!(
        eventually(Duration::from_secs(5), || unread_by(w) > 0),
        "the request never reached the worker"
    );
    signal(w, Signal::SIGKILL);
    let (r, took) = t.join().unwrap();
    assert!(
        matches!(&r, Err(Error::Failed(reason)) if reason == "the worker ended during the request"),
        "{r:?}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    still_serving_without_leaks(&b, &base);
}

#[test]
fn hung_worker_is_killed_at_the_deadline_and_replaced() {
    let b = Broker::start_with(TEST_POLICY, &["--request-timeout", "1"]);
    let base = baseline(&b);
    let w = b.worker_pid();
    signal(w, Signal::SIGSTOP);
    let t = Instant::now();
    let r = b.client().rooms(Spaces::UTS).map(drop);
    assert!(
        matches!(&r, Err(Error::Failed(reason)) if reason.contains("did not answer within 1s")),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(eventually(
        Duration::from_secs(3),
        || !std::path::Path::new(&format!("/proc/{w}")).exists()
            || status(w, "State").starts_with('Z')
    ));
    assert!(b.events().iter().any(|e| e["event"] == "worker_hung"));
    still_serving_without_leaks(&b, &base);
}

/// Five worker deaths within the breaker's window: each new worker is
/// killed as soon as it is up.
fn kill_five_workers_in_a_row(b: &Broker) {
    let mut last = 0;
    for _ in 0..5 {
        let mut pid = 0;
        assert!(eventually(Duration::from_secs(3), || {
            pid = b.worker_pids().first().copied().unwrap_or(0);
            pid != 0 && pid != last
        }));
        signal(pid, Signal::SIGKILL);
        last = pid;
    }
}

#[test]
fn crash_loop_trips_the_breaker_and_the_service_fails_closed() {
    let b = Broker::start(TEST_POLICY);
    kill_five_workers_in_a_row(&b);
    assert!(eventually(Duration::from_secs(3), || b
        .events()
        .iter()
        .any(|e| e["event"] == "breaker_open")));
    let r = b.client().rooms(Spaces::UTS).map(drop);
    assert!(
        matches!(&r, Err(Error::Unavailable(reason)) if reason.contains("retrying slowly")),
        "{r:?}"
    );
    // It still answers: the policy still denies what it denies.
    let out = b.spacer_as(STRANGER, STRANGER, &["rooms", "--uts"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn an_open_breaker_closes_once_a_retry_brings_a_worker_up() {
    let b = Broker::start_with(TEST_POLICY, &["--breaker-retry", "1"]);
    kill_five_workers_in_a_row(&b);
    assert!(eventually(Duration::from_secs(3), || b
        .events()
        .iter()
        .any(|e| e["event"] == "breaker_open" && e["retry_s"] == 1)));
    // One retry a second later: a worker that stays up closes it.
    assert!(eventually(Duration::from_secs(5), || b
        .events()
        .iter()
        .any(|e| e["event"] == "breaker_closed")));
    let base = baseline(&b);
    still_serving_without_leaks(&b, &base);
}

#[test]
fn garbage_of_every_size_is_answered_and_nothing_breaks() {
    let b = Broker::start(TEST_POLICY);
    let base = baseline(&b);
    let chan = Channel::connect(&b.socket).unwrap();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for len in 0..=256usize {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        chan.send(&junk, &[]).unwrap();
        let r = reply(&chan);
        assert!(
            matches!(
                r,
                Some(Reply::Error {
                    kind: ErrorKind::Invalid,
                    ..
                })
            ),
            "{len} bytes: {r:?}"
        );
    }
    // Every truncation of a valid request.
    let valid = Request::rooms(Spaces::UTS.bits()).encode();
    for cut in 0..valid.len() {
        chan.send(&valid[..cut], &[]).unwrap();
        assert_eq!(
            invalid_reason(reply(&chan)),
            "malformed request",
            "cut at {cut}"
        );
    }
    drop(chan);
    still_serving_without_leaks(&b, &base);
}

#[test]
fn oversized_datagram_is_refused_and_the_connection_closed() {
    let b = Broker::start(TEST_POLICY);
    let base = baseline(&b);
    let max = spacer_proto::wire::MAX_REQUEST_BYTES;
    for size in [max + 1, 4096, 65_000] {
        let chan = Channel::connect(&b.socket).unwrap();
        chan.send(&vec![0x80; size], &[]).unwrap();
        assert_eq!(
            invalid_reason(reply(&chan)),
            format!("request larger than {max} bytes")
        );
        let mut buf = [0u8; 16];
        assert!(
            chan.recv(&mut buf, 0).unwrap().is_none(),
            "closed after a truncated datagram"
        );
    }
    still_serving_without_leaks(&b, &base);
}

/// Sends `req` with `fds` attached: the kernel refuses them to the sender
/// (`EPERM`: the broker's client sockets have `SO_PASSRIGHTS` off), or,
/// where it cannot (a kernel before 6.16, or the fallback forced), the
/// broker answers that fds came with the request.
fn attached_fds_are_refused(chan: &Channel, req: &[u8], fds: &[BorrowedFd<'_>], fallback: bool) {
    match chan.send(req, fds) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && !fallback => {}
        Err(e) => panic!("send: {e}"),
        Ok(()) => assert_eq!(invalid_reason(reply(chan)), "fds attached to a request"),
    }
}

/// A broker that refuses fds by the kernel where it can, or (`fallback`)
/// always by taking them in and closing them off its event loop.
fn broker_refusing_fds(fallback: bool) -> Broker {
    let wrapper: &[&str] = if fallback {
        &["env", "SPACER_TEST_FD_FALLBACK=1"]
    } else {
        &[]
    };
    Broker::start_wrapped(TEST_POLICY, &[], wrapper)
}

fn request_carrying_fds_is_refused(fallback: bool) {
    let b = broker_refusing_fds(fallback);
    let base = baseline(&b);
    let chan = Channel::connect(&b.socket).unwrap();
    let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let req = Request::rooms(Spaces::UTS.bits()).encode();
    for n in [1, 250] {
        let many: Vec<BorrowedFd<'_>> = (0..n).map(|_| null.as_fd()).collect();
        attached_fds_are_refused(&chan, &req, &many, fallback);
    }
    // Many 253-fd messages, from several connections.
    let conns: Vec<Channel> = (0..4)
        .map(|_| Channel::connect(&b.socket).unwrap())
        .collect();
    let many: Vec<BorrowedFd<'_>> = (0..253).map(|_| null.as_fd()).collect();
    for _ in 0..25 {
        for c in &conns {
            attached_fds_are_refused(c, &req, &many, fallback);
        }
    }
    // Fds attached come first, even on a datagram too large: answered so,
    // and the connection kept.
    let big = vec![0x80; spacer_proto::wire::MAX_REQUEST_BYTES + 1];
    attached_fds_are_refused(&chan, &big, &[null.as_fd()], fallback);
    // The connection is still usable.
    chan.send(&req, &[]).unwrap();
    assert!(matches!(reply(&chan), Some(Reply::Rooms(_))));
    drop((chan, conns));
    still_serving_without_leaks(&b, &base);
}

#[test]
fn request_carrying_fds_is_refused_and_they_never_reach_the_broker() {
    request_carrying_fds_is_refused(false);
}

#[test]
fn without_so_passrights_request_carrying_fds_is_refused_and_they_are_closed() {
    request_carrying_fds_is_refused(true);
}

fn fds_attached_on_a_subspace_conn_are_refused(fallback: bool) {
    // There the broker takes each sender's credentials and pidfd, so
    // without SO_PASSRIGHTS the kernel installs attached fds in it: they
    // must be closed (off the event loop).
    let b = broker_refusing_fds(fallback);
    let base = baseline(&b);
    let (sub, _ns) = b.client().subspace(Spaces::USER).unwrap();
    let chan = Channel::from_fd(sub.as_fd().try_clone_to_owned().unwrap()).unwrap();
    let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let req = Request::rooms(Spaces::UTS.bits()).encode();
    for n in [1, 2, 3, 253] {
        let many: Vec<BorrowedFd<'_>> = (0..n).map(|_| null.as_fd()).collect();
        for _ in 0..20 {
            attached_fds_are_refused(&chan, &req, &many, fallback);
        }
    }
    // Still usable, and served by the subspace's worker.
    chan.send(&req, &[]).unwrap();
    assert!(matches!(reply(&chan), Some(Reply::Rooms(_))));
    drop((chan, sub));
    still_serving_without_leaks(&b, &base);
}

#[test]
fn fds_attached_on_a_subspace_conn_are_refused_and_closed_at_once() {
    fds_attached_on_a_subspace_conn_are_refused(false);
}

#[test]
fn without_so_passrights_fds_attached_on_a_subspace_conn_are_closed_at_once() {
    fds_attached_on_a_subspace_conn_are_refused(true);
}

#[test]
fn empty_datagram_and_wrong_versions_are_answered() {
    let b = Broker::start(TEST_POLICY);
    let chan = Channel::connect(&b.socket).unwrap();
    chan.send(&[], &[]).unwrap();
    assert_eq!(invalid_reason(reply(&chan)), "malformed request");
    // {"v": 99, ...}
    let mut v99 = Request::rooms(Spaces::UTS.bits()).encode();
    v99[3] = 99;
    chan.send(&v99, &[]).unwrap();
    assert_eq!(
        invalid_reason(reply(&chan)),
        "unsupported protocol version 99 (this side speaks 1)"
    );
}

#[test]
fn client_killed_before_the_reply_is_audited_undelivered() {
    let b = Broker::start(TEST_POLICY);
    let base = baseline(&b);
    let w = b.worker_pid();
    signal(w, Signal::SIGSTOP);
    // Stopped for sure first (see the test above that kills it).
    assert!(eventually(Duration::from_secs(5), || status(w, "State")
        .starts_with('T')));
    // (Not mnt or uts: those copy the client's own, and a client that is
    // gone before the worker gets to them is refused instead.)
    let mut client = spawn_retrying(
        Command::new(b.copy_bin("spacer"))
            .args(["rooms", "--net", "--ipc", "--cgroup", "--time"])
            .env("SPACER_SOCKET", &b.socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // Wait until the broker has the request in flight (unread on the
    // stopped worker's socket), then kill the client.
    assert!(
        eventually(Duration::from_secs(5), || unread_by(w) > 0),
        "the request never reached the worker"
    );
    client.kill().unwrap();
    client.wait().unwrap();
    signal(w, Signal::SIGCONT);
    assert!(
        eventually(Duration::from_secs(5), || b
            .decisions()
            .iter()
            .any(|d| d["decision"] == "allow" && d["delivered"] == false)),
        "{}",
        b.log_text()
    );
    let d = b
        .decisions()
        .into_iter()
        .find(|d| d["delivered"] == false)
        .unwrap();
    assert!(d["reason"].as_str().unwrap().starts_with("undelivered"));
    assert_eq!(d["namespaces"].as_object().unwrap().len(), 4);
    still_serving_without_leaks(&b, &base);
}

#[test]
fn slowloris_is_closed_at_the_first_request_deadline() {
    let b = Broker::start_with(TEST_POLICY, &["--first-request-timeout", "1"]);
    let base = baseline(&b);
    let idle: Vec<Channel> = (0..20)
        .map(|_| Channel::connect(&b.socket).unwrap())
        .collect();
    // Nobody else waits meanwhile.
    let t = Instant::now();
    drop(b.client().rooms(Spaces::UTS).unwrap());
    assert!(t.elapsed() < Duration::from_millis(500));
    let t = Instant::now();
    let mut buf = [0u8; 16];
    for c in &idle {
        assert!(
            c.recv(&mut buf, 0).unwrap().is_none(),
            "closed by the broker"
        );
    }
    let took = t.elapsed();
    assert!(
        took > Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    drop(idle);
    still_serving_without_leaks(&b, &base);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let b = Broker::start(TEST_POLICY);
    let chan = Channel::connect(&b.socket).unwrap();
    let kinds = [Spaces::NET, Spaces::UTS, Spaces::IPC];
    for i in 0..30 {
        chan.send(&Request::rooms(kinds[i % 3].bits()).encode(), &[])
            .unwrap();
    }
    for i in 0..30 {
        match reply(&chan) {
            Some(Reply::Rooms(r)) => assert_eq!(r.spaces(), kinds[i % 3], "answer {i}"),
            other => panic!("answer {i}: {other:?}"),
        }
    }
}

#[test]
fn client_that_never_reads_holds_one_answer_and_gets_the_rest_in_order_later() {
    let b = Broker::start_with(TEST_POLICY, &["--write-timeout", "1"]);
    let base = baseline(&b);
    let greedy = Channel::connect(&b.socket).unwrap();
    greedy.set_nonblocking(true).unwrap();
    let kinds = [Spaces::NET, Spaces::UTS, Spaces::IPC];
    let mut sent = 0;
    while sent < 300
        && greedy
            .send(&Request::rooms(kinds[sent % 3].bits()).encode(), &[])
            .is_ok()
    {
        sent += 1;
    }
    // Others are served while it sits there.
    let t = Instant::now();
    for _ in 0..20 {
        drop(b.client().rooms(Spaces::NET).unwrap());
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Past the write deadline it holds exactly one answer (so at most six
    // fds in flight), and its connection is kept, not dropped with them.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(exactly_one_unread(&greedy));
    greedy.set_nonblocking(false).unwrap();
    // Reading, it gets every answer, in order: nothing lost.
    for i in 0..sent {
        match reply(&greedy) {
            Some(Reply::Rooms(r)) => assert_eq!(r.spaces(), kinds[i % 3], "answer {i}"),
            other => panic!("answer {i} of {sent}: {other:?}"),
        }
    }
    drop(greedy);
    still_serving_without_leaks(&b, &base);
}

/// Whether exactly one datagram waits in a socket's receive queue: on
/// `SOCK_SEQPACKET`, `FIONREAD` counts the bytes of every queued datagram,
/// and a peek the first one's.
fn exactly_one_unread(chan: &Channel) -> bool {
    let queued = rustix::io::ioctl_fionread(chan).unwrap();
    let mut buf = [0u8; 4096];
    let first = nix::sys::socket::recv(
        std::os::fd::AsRawFd::as_raw_fd(chan),
        &mut buf,
        nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    )
    .unwrap_or(0);
    first > 0 && queued == first as u64
}

#[test]
fn one_uid_cannot_take_every_connection_without_a_policy_limit() {
    let b = Broker::start_with(TEST_POLICY, &["--max-connections-per-uid", "5"]);
    // STRANGER matches no rule: [defaults] sets no max_connections.
    let v = b.probe_as(STRANGER, STRANGER, &["conns", "6"]);
    let outcomes: Vec<&str> = v["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert_eq!(outcomes[5], "denied: max_connections 5 reached", "{v}");
    assert!(
        outcomes[..5]
            .iter()
            .all(|o| o.starts_with("denied: uts not allowed")),
        "{v}"
    );
    // Root is served.
    assert!(b.client().rooms(Spaces::UTS).is_ok());
}

#[test]
fn connection_flood_hits_the_global_cap_and_new_clients_are_served_after() {
    let b = Broker::start_with(TEST_POLICY, &["--max-connections", "20"]);
    let flood: Vec<Channel> = (0..30)
        .map(|_| Channel::connect(&b.socket).unwrap())
        .collect();
    let req = Request::rooms(Spaces::UTS.bits()).encode();
    let mut ok = 0;
    let mut refused = 0;
    for c in &flood {
        let _ = c.send(&req, &[]);
        match reply(c) {
            Some(Reply::Rooms(_)) => ok += 1,
            Some(Reply::Error {
                kind: ErrorKind::Denied,
                reason,
            }) => {
                // One uid takes 19: the last slot is kept for uids with none.
                assert_eq!(
                    reason,
                    "the broker's connection limit 20 is nearly reached (the last 1 are kept for uids with none open)"
                );
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((ok, refused), (19, 11));
    // Another uid's first connection takes the kept slot.
    let other = b.probe_as(TENANT, TENANT, &["conns", "1"]);
    assert_eq!(other["outcomes"][0], "ok", "{other}");
    drop(flood);
    assert!(eventually(Duration::from_secs(3), || b
        .client()
        .rooms(Spaces::UTS)
        .is_ok()));
}

#[test]
fn socket_passed_to_another_uid_acts_as_the_connecting_process() {
    let b = Broker::start(TEST_POLICY);
    let out = b.probe_as(0, 0, &["pass", &STRANGER.to_string()]);
    assert_eq!(out["outcome"], "ok", "{out}");
    // The stranger used root's connection: audited as root.
    assert!(eventually(Duration::from_secs(3), || b.decisions().len() == 1));
    assert_eq!(b.decisions()[0]["uid"], 0);
}

#[test]
fn peer_that_has_exited_is_denied() {
    let b = Broker::start(TEST_POLICY);
    let out = b.probe_as(0, 0, &["pass", &STRANGER.to_string(), "--orphan"]);
    assert_eq!(out["parent_exited"], true, "{out}");
    assert_eq!(out["outcome"], "denied: the connecting process has exited");
}

#[test]
fn subspace_worker_killed_closes_its_conn_and_releases_the_count() {
    let b = Broker::start(
        r#"
[[rule]]
uid = 0
allow = ["uts", "user"]
max_subspaces = 1
"#,
    );
    let c = b.client();
    let (inner, sub) = c.subspace(Spaces::USER).unwrap();
    // The limit holds while it lives.
    match c.subspace(Spaces::USER) {
        Err(Error::Denied(r)) => assert!(r.contains("max_subspaces 1"), "{r}"),
        other => panic!("{other:?}"),
    }
    let pid = {
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            std::os::fd::AsRawFd::as_raw_fd(&sub.pidfd)
        ))
        .unwrap();
        info.lines()
            .find_map(|l| {
                l.strip_prefix("Pid:")
                    .map(|v| v.trim().parse::<i32>().unwrap())
            })
            .unwrap()
    };
    signal(pid, Signal::SIGKILL);
    assert!(eventually(Duration::from_secs(3), || matches!(
        inner.rooms(Spaces::UTS),
        Err(Error::Closed) | Err(Error::Io(_))
    )));
    assert!(eventually(Duration::from_secs(3), || b
        .events()
        .iter()
        .any(|e| e["event"] == "subspace_closed")));
    // Reaped (no zombie left), and its place is free again.
    assert!(eventually(Duration::from_secs(3), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_err()
    }));
    drop((inner, sub));
    assert!(eventually(Duration::from_secs(3), || c
        .subspace(Spaces::USER)
        .is_ok()));
}

#[test]
fn soak_of_mixed_traffic_leaves_fds_and_memory_at_baseline() {
    let b = Broker::start(&format!(
        "{TEST_POLICY}\n[[rule]]\nuid = {STRANGER}\nallow = [\"uts\", \"user\"]\n"
    ));
    // Warm up every path once.
    b.probe_as(TENANT, TENANT, &["soak", "60"]);
    b.probe_as(STRANGER, STRANGER, &["soak", "60"]);
    std::thread::sleep(Duration::from_millis(200));
    let base = b.fd_counts();
    let rss = (rss_kib(b.pid()), rss_kib(b.worker_pid()));
    let mut total = 0;
    for (uid, n) in [(TENANT, 1500), (STRANGER, 1500), (0, 1500)] {
        let v = b.probe_as(uid, uid, &["soak", &n.to_string()]);
        total += v["ok"].as_u64().unwrap()
            + v["denied"].as_u64().unwrap()
            + v["other"].as_u64().unwrap();
        assert!(
            v["ok"].as_u64().unwrap() > 0 && v["other"].as_u64().unwrap() > 0,
            "{v}"
        );
    }
    assert_eq!(total, 4500);
    still_serving_without_leaks(&b, &base);
    let after = (rss_kib(b.pid()), rss_kib(b.worker_pid()));
    eprintln!("soak: {total} requests; fds {base:?} -> {:?}; rss broker {} -> {} KiB, worker {} -> {} KiB", b.fd_counts(), rss.0, after.0, rss.1, after.1);
    assert!(
        after.0 <= rss.0 + 1024,
        "broker RSS grew: {rss:?} -> {after:?}"
    );
    assert!(
        after.1 <= rss.1 + 256,
        "worker RSS grew: {rss:?} -> {after:?}"
    );
}

#[test]
fn a_worker_writing_to_stderr_cannot_forge_audit_records() {
    // The workers' stderr is a pipe the broker reads, not the broker's own
    // stderr (the audit log): what a subverted worker writes there arrives
    // as escaped `worker_stderr` events, never as a decision.
    let b = Broker::start(TEST_POLICY);
    let base = baseline(&b);
    let before = b.decisions().len();
    let log = std::fs::read_link(format!("/proc/{}/fd/2", b.pid())).unwrap();
    for pid in [b.supervisor_pid(), b.worker_pid()] {
        let err = std::fs::read_link(format!("/proc/{pid}/fd/2")).unwrap();
        assert!(err.to_string_lossy().starts_with("pipe:"), "{err:?}");
        assert_ne!(err, log);
    }
    let forged = r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","audit":{"uid":0,"decision":"allow"},"message":"decision","target":"spacer::audit"}"#;
    let mut stderr = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/fd/2", b.worker_pid()))
        .unwrap();
    use std::io::Write;
    write!(stderr, "spacer-worker: hello\n{forged}\r\nunfinished").unwrap();
    drop(stderr);
    let relayed = || -> Vec<String> {
        b.events()
            .into_iter()
            .filter(|e| e["event"] == "worker_stderr")
            .map(|e| e["line"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(3), || relayed().len() == 2),
        "{:?}\n{}",
        relayed(),
        b.log_text()
    );
    let lines = relayed();
    assert_eq!(lines[0], "spacer-worker: hello");
    assert!(lines[1].starts_with(r#"{\"timestamp\""#), "{}", lines[1]);
    assert!(lines[1].ends_with("\\r"), "{}", lines[1]);
    assert_eq!(b.decisions().len(), before, "no forged decision");
    still_serving_without_leaks(&b, &base);
}
