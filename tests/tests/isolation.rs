//! Tenant isolation, second round: attacks that any local user (or a
//! tenant with a grant) can play against the broker or other tenants.
//! Each test plays one, then checks that another client is still served
//! within its normal latency and that nothing leaked.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use spacer_client::Spaces;
use spacer_proto::wire::{decode_reply, ErrorKind, Reply, Request};
use spacer_proto::Channel;
use spacer_tests::*;

/// A loopback TCP connection in a network namespace of its own, whose
/// client end has unsent data and `SO_LINGER` of `linger`: the last close
/// of that end blocks for up to `linger`. The server end (kept in the
/// returned pair, never read) is what keeps the data unsent.
fn lingering_socket(linger: Duration) -> (OwnedFd, TcpStream, TcpListener) {
    std::thread::spawn(move || {
        // This thread only: the test process keeps its own network.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare net");
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip");
        assert!(up.success());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let l = nix::libc::linger {
            l_onoff: 1,
            l_linger: linger.as_secs() as i32,
        };
        nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::Linger, &l).unwrap();
        client.set_nonblocking(true).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let mut queued = 0usize;
        while let Ok(n) = (&client).write(&chunk) {
            queued += n;
        }
        assert!(queued > 0);
        (OwnedFd::from(client), server, listener)
    })
    .join()
    .unwrap()
}

/// How long a uts room takes for a fresh client of root's.
fn uts_latency(b: &Broker) -> Duration {
    let t0 = Instant::now();
    let r = b.client().rooms(Spaces::UTS);
    assert!(r.is_ok_and(|r| r.uts.is_some()), "another client is served");
    t0.elapsed()
}

/// Sends a uts request on `chan` with `fd` attached and then closes the
/// sender's copy of `fd`; then, before the attacker's answer is read,
/// times another client's uts room. Either the kernel refuses the fd to
/// the sender (`EPERM`, `SO_PASSRIGHTS`), or the broker answers that fds
/// came with the request. Returns which, and the other client's latency.
fn attack_and_time(b: &Broker, chan: &Channel, fd: OwnedFd) -> (&'static str, Duration) {
    let req = Request::rooms(Spaces::UTS.bits()).encode();
    let sent = chan.send(&req, &[fd.as_fd()]);
    if sent.is_err() {
        // This copy is the last one: its close would linger here.
        let off = nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::Linger, &off).unwrap();
    }
    drop(fd);
    // The broker has the request (or the kernel refused it) by now.
    std::thread::sleep(Duration::from_millis(20));
    let took = uts_latency(b);
    let how = match sent {
        Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => "refused by the kernel",
        Err(e) => panic!("send: {e}"),
        Ok(()) => {
            let mut buf = vec![0u8; 4096];
            let got = chan.recv(&mut buf, 8).unwrap().unwrap();
            match decode_reply(&buf[..got.len], got.fds) {
                Ok(Reply::Error {
                    kind: ErrorKind::Invalid,
                    reason,
                }) if reason == "fds attached to a request" => "refused by the broker",
                other => panic!("unexpected answer {other:?}"),
            }
        }
    };
    (how, took)
}

/// The lingering-close attack on a client connection and on a subspace's
/// conn, against a broker started with `env` (e.g. the fallback forced).
fn lingering_fds_never_stall(env: &[&str], want: &str) {
    let wrapper: Vec<&str> = if env.is_empty() {
        Vec::new()
    } else {
        std::iter::once("env").chain(env.iter().copied()).collect()
    };
    let b = Broker::start_wrapped(TEST_POLICY, &[], &wrapper);
    let (sub, _ns) = b.client().subspace(Spaces::USER).unwrap();
    drop(b.client().rooms(Spaces::UTS).unwrap());
    std::thread::sleep(Duration::from_millis(50));
    let base = b.fd_counts();
    let quiet = uts_latency(&b);

    let linger = Duration::from_secs(15);
    let mut keep = Vec::new();
    // Three client connections, then a subspace's conn, where the broker
    // takes each sender's credentials and pidfd with the request.
    let mut chans: Vec<(Channel, &str)> = (0..3)
        .map(|_| (Channel::connect(&b.socket).unwrap(), "a client connection"))
        .collect();
    let conn = Channel::from_fd(sub.as_fd().try_clone_to_owned().unwrap()).unwrap();
    chans.push((conn, "a subspace conn"));
    for (chan, on) in &chans {
        let (fd, server, listener) = lingering_socket(linger);
        let (how, took) = attack_and_time(&b, chan, fd);
        assert_eq!(how, want);
        keep.push((server, listener));
        assert!(
            took < Duration::from_secs(2),
            "another client waited {took:?} after a lingering fd on {on} (quiet: {quiet:?})"
        );
        eprintln!("uts latency quiet {quiet:?}, after the attack on {on} {took:?} ({want})");
    }
    // The subspace's conn is still usable.
    let sub2 = sub.rooms(Spaces::NET);
    assert!(sub2.is_ok_and(|r| r.net.is_some()));
    drop((chans, sub));
    b.assert_fds_back_to(&base);
}

#[test]
fn an_attached_lingering_socket_does_not_freeze_the_broker() {
    let how = if Channel::pair().unwrap().0.refuse_fds().unwrap() {
        "refused by the kernel"
    } else {
        "refused by the broker"
    };
    lingering_fds_never_stall(&[], how);
}

#[test]
fn without_so_passrights_attached_lingering_sockets_are_closed_off_the_event_loop() {
    lingering_fds_never_stall(&["SPACER_TEST_FD_FALLBACK=1"], "refused by the broker");
}

#[test]
fn refused_connections_are_recorded_ten_per_interval_and_the_rest_counted() {
    // A uid with no rule connects as fast as it can and is refused each
    // time (here past `max_connections` of the defaults).
    let b = Broker::start(
        "[defaults]\nallow = []\nmax_connections = 2\n[[rule]]\nuid = 0\nallow = [\"uts\"]\n",
    );
    let base = b.fd_counts();
    let v = b.probe_as(STRANGER, STRANGER, &["conns", "300"]);
    let outcomes = v["outcomes"].as_array().unwrap();
    let refused = outcomes
        .iter()
        .filter(|o| o.as_str().is_some_and(|o| o.contains("max_connections 2")))
        .count();
    assert_eq!(refused, 298, "{v}");
    assert!(uts_latency(&b) < Duration::from_secs(2));
    b.assert_fds_back_to(&base);
    // The count is written when the interval ends, or at once on stop.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(10), || b
        .events()
        .iter()
        .any(|e| e["event"] == "stop")));
    let events = b.events();
    let one_by_one = events
        .iter()
        .filter(|e| e["message"] == "connection refused" && e["uid"] == STRANGER)
        .count();
    let counted: Vec<_> = events
        .iter()
        .filter(|e| e["message"] == "connections refused" && e["uid"] == STRANGER)
        .collect();
    assert_eq!(one_by_one, 10, "{events:?}");
    assert_eq!(counted.len(), 1, "{counted:?}");
    assert_eq!(counted[0]["count"], 288, "{}", counted[0]);
    assert_eq!(counted[0]["reason"], "max_connections 2 reached");
    assert_eq!(counted[0]["target"], "spacer::audit");
}
