//! A test client that uses the library in-process, run by the end-to-end
//! tests as other uids, reporting what it saw as one JSON object.
//!
//! `spacer-probe subspace [--pid] [ROOM...]`: a user subspace (plus a PID
//! namespace), rooms inside it; prints ownership facts.
//! `spacer-probe nested`: two nested user subspaces; closes the middle one;
//! checks the inner one still serves.
//! `spacer-probe close`: a subspace, then its connection closed; waits for
//! its worker to end.
//! `spacer-probe many N`: N subspaces made and closed one after another.
//! `spacer-probe conns-hold N SECS`: N connections to `$SPACER_SOCKET`
//! (never a subspace's `SPACER_FD`) held at once for SECS seconds, one uts
//! request on each; prints each outcome.
//! `spacer-probe as-ids K N SECS` (as root of a user namespace that maps
//! ids 1..=K): `conns-hold N SECS` as each uid and gid 1..=K at once;
//! prints every outcome together.
//! `spacer-probe conns N`: N connections held open at once, one uts request
//! on each; prints each outcome.
//! `spacer-probe subspaces N`: N subspaces held open at once; then one
//! closed and one more asked for.
//! `spacer-probe depth N`: subspaces nested N deep, until one is refused.
//! `spacer-probe race`: two connections send a uts request at the same
//! moment; prints both outcomes.
//! `spacer-probe pass UID [--orphan]` (as root): connects, hands the
//! connection to a child running as UID (over a socket in the current
//! directory), and with `--orphan` exits at once; the child (`receive`)
//! waits for that, then asks for uts and prints the outcome.
//! `spacer-probe soak N`: N mixed requests: allowed, denied, malformed,
//! abandoned.
//! `spacer-probe no-userns CMD [ARG...]`: execs CMD where no process may
//! make a user namespace, as on a host that forbids unprivileged ones: a
//! seccomp filter (no_new_privs, inherited by every descendant) fails
//! `unshare` and `clone` with `CLONE_NEWUSER` with EPERM, and `clone3`
//! (whose flags a filter cannot read) with ENOSYS, so libc falls back to
//! `clone`.
//! `spacer-probe clocks`: prints this process's `CLOCK_MONOTONIC` and
//! `CLOCK_BOOTTIME`, in seconds.
//! `spacer-probe time-rooms SECS... [nested SECS...]`: a user subspace,
//! then one time room per offset through it (monotonic), each entered by
//! `spacer-probe clocks`; after `nested`, through a subspace inside it;
//! prints the monotonic clocks seen.
//! `spacer-probe private-sh`: a private worker (no broker), a user+PID
//! subspace, and `sh -c 'echo $$; id -u'` started inside it.
//! `spacer-probe private-rooms`: a private worker: rooms directly, then a
//! user subspace and rooms inside it.
//! `spacer-probe stop-storm N`: asks for N user subspaces, each followed by
//! a uts room, while another thread sends SIGSTOP to every process this uid
//! may signal; then SIGCONT to all of them and SIGKILL to the subspace
//! workers left behind; then one more subspace. Prints each outcome, how
//! long each subspace request took, and how many of the storm's signals
//! reached a process.
//! `spacer-probe flood-net CONNS SECS`: CONNS connections asking for net
//! rooms as fast as they are answered, for SECS seconds.
//! `spacer-probe latency N`: N uts rooms, one every 5 ms; prints the median
//! and the worst round trip.
//! `spacer-probe hold-net N`: asks for net rooms and holds them, up to N or
//! the first refusal; asks once more; then closes three and asks again
//! (retrying while they are being torn down).
//! `spacer-probe stop-close N`: N times: a user subspace (retried while
//! `max_subspaces` refuses), its worker stopped (SIGSTOP), its connection
//! closed; prints how many were granted, the most of its subspace workers
//! alive at once, and whether all are gone in the end.
//! `spacer-probe seize-race N`: N nested user subspaces while another
//! thread tries `PTRACE_SEIZE` on every `spacer-worker` process, over and
//! over; prints the attempts and how many attached.
//! `spacer-probe limit-net`: a user subspace whose own
//! `user.max_net_namespaces` is set to 0 from inside, then rooms of all six
//! types through it (net fails), then more requests; prints each outcome
//! and the subspace worker's pid.

#![forbid(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde_json::{json, Value};
use spacer_client::{Client, NsType, Spaces};
use spacer_proto::fd;

fn pid_of(pidfd: &OwnedFd) -> i32 {
    let me = std::process::id();
    let path = format!(
        "/proc/{me}/fdinfo/{}",
        std::os::fd::AsRawFd::as_raw_fd(pidfd)
    );
    std::fs::read_to_string(path)
        .expect("fdinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("Pid:")
                .map(|v| v.trim().parse().unwrap_or(-1))
        })
        .unwrap_or(-1)
}

/// Pids of the worker processes on the host (supervisor and room workers,
/// the spawner, subspace workers).
fn worker_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|p: &i32| {
                    std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| {
                        matches!(
                            c.trim(),
                            "spacer-worker" | "spacer-spawner" | "spacer-subspace"
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn exited(pidfd: BorrowedFd<'_>, within: Duration) -> bool {
    let mut p = [PollFd::new(pidfd, PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(within.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    matches!(nix::poll::poll(&mut p, ms), Ok(n) if n > 0)
}

/// The parent half of `pass`: connect, then hand the connection over.
// With --orphan this process exits without waiting for its child on
// purpose: the test is that the connecting process is gone.
#[allow(clippy::zombie_processes)]
fn pass(uid: u32, orphan: bool) {
    use std::os::unix::process::CommandExt;
    let conn = spacer_proto::Channel::connect(&std::path::PathBuf::from(
        std::env::var_os("SPACER_SOCKET").expect("SPACER_SOCKET"),
    ))
    .expect("connect");
    let path = std::env::current_dir()
        .expect("cwd")
        .join(format!("pass-{}.sock", std::process::id()));
    let listener = listen_seqpacket(&path);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"));
    child.arg("receive").arg(&path).uid(uid).gid(uid);
    let mut child = child.spawn().expect("spawn receiver");
    let hand = nix::sys::socket::accept(&listener).expect("accept");
    let hand = spacer_proto::Channel::from_fd(hand).expect("channel");
    hand.send(b"conn", &[conn.as_fd()])
        .expect("send the connection");
    let _ = std::fs::remove_file(&path);
    if !orphan {
        child.wait().expect("wait for the receiver");
    }
}

fn listen_seqpacket(path: &std::path::Path) -> OwnedFd {
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &UnixAddr::new(path).expect("addr"),
    )
    .expect("bind");
    listen(&fd, Backlog::new(1).expect("backlog")).expect("listen");
    fd
}

/// The child half of `pass`.
fn receive(path: &str) -> Value {
    let parent = fd::pidfd_open(nix::unistd::getppid().as_raw()).expect("parent pidfd");
    let hand =
        spacer_proto::Channel::connect(std::path::Path::new(path)).expect("connect to parent");
    let mut buf = [0u8; 16];
    let got = hand.recv(&mut buf, 1).expect("recv").expect("a message");
    let conn = got.fds.into_iter().next().expect("the connection");
    let client = Client::from_fd(conn).expect("client");
    // With --orphan, the process that connected is gone by now (or soon).
    let orphaned = exited(parent.as_fd(), Duration::from_secs(5));
    json!({"parent_exited": orphaned, "outcome": outcome(client.rooms(Spaces::UTS).map(drop))})
}

/// Mixed traffic from this uid.
fn soak(client: &Client, n: usize) -> Value {
    let sock = std::path::PathBuf::from(std::env::var_os("SPACER_SOCKET").expect("SPACER_SOCKET"));
    let (mut ok, mut denied, mut other) = (0, 0, 0);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    for i in 0..n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let r = match i % 6 {
            0 | 1 => client.rooms(Spaces::UTS).map(drop),
            2 => client.rooms(Spaces::NET | Spaces::MNT).map(drop),
            3 => client.subspace(Spaces::USER).map(drop),
            4 => {
                // Malformed: random bytes on a fresh connection.
                let c = spacer_proto::Channel::connect(&sock).expect("connect");
                let len = (seed % 200) as usize;
                let junk: Vec<u8> = (0..len).map(|k| (seed >> (k % 56)) as u8).collect();
                let _ = c.send(&junk, &[]);
                let mut buf = [0u8; 4096];
                let _ = c.recv(&mut buf, 6);
                other += 1;
                continue;
            }
            _ => {
                // Abandoned: ask, and leave before the answer.
                let c = spacer_proto::Channel::connect(&sock).expect("connect");
                let _ = c.send(
                    &spacer_proto::wire::Request::rooms(Spaces::UTS.bits()).encode(),
                    &[],
                );
                other += 1;
                continue;
            }
        };
        match r {
            Ok(()) => ok += 1,
            Err(e) if e.is_denied() => denied += 1,
            Err(_) => other += 1,
        }
    }
    json!({"ok": ok, "denied": denied, "other": other})
}

/// "ok", or the error as the library shows it.
fn outcome<T>(r: Result<T, spacer_client::Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

fn ino(f: &OwnedFd) -> u64 {
    fd::namespace_inode(f.as_fd()).expect("namespace inode")
}

/// Forbids user namespaces to this process and its descendants, then
/// execs `cmd` (see `no-userns` above).
fn exec_without_userns(cmd: &[String]) -> ! {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    use std::os::unix::process::CommandExt;
    let arch = TargetArch::try_from(std::env::consts::ARCH).expect("architecture");
    let newuser = libc::CLONE_NEWUSER as u64;
    let with_newuser = || {
        vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(newuser),
            newuser,
        )
        .expect("condition")])
        .expect("rule")]
    };
    let filter = |rules: Vec<(i64, Vec<SeccompRule>)>, errno: i32| -> seccompiler::BpfProgram {
        SeccompFilter::new(
            rules.into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )
        .expect("filter")
        .try_into()
        .expect("bpf")
    };
    let no_newuser = filter(
        vec![
            (libc::SYS_unshare, with_newuser()),
            (libc::SYS_clone, with_newuser()),
        ],
        libc::EPERM,
    );
    let no_clone3 = filter(vec![(libc::SYS_clone3, vec![])], libc::ENOSYS);
    seccompiler::apply_filter(&no_newuser).expect("seccomp");
    seccompiler::apply_filter(&no_clone3).expect("seccomp");
    let err = std::process::Command::new(&cmd[0]).args(&cmd[1..]).exec();
    panic!("exec {}: {err}", cmd[0]);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("no-userns") => exec_without_userns(&args[1..]),
        Some("clocks") => {
            use nix::time::{clock_gettime, ClockId};
            let secs = |c| {
                let t = clock_gettime(c).expect("clock_gettime");
                t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
            };
            println!(
                "{}",
                json!({
                    "monotonic": secs(ClockId::CLOCK_MONOTONIC),
                    "boottime": secs(ClockId::CLOCK_BOOTTIME),
                })
            );
            return;
        }
        Some("private-sh") => {
            use spacer_client::{CommandExt, Join};
            let spacer = Client::private().expect("private worker");
            let (_inside, sub) = spacer
                .subspace(Spaces::USER | Spaces::PID)
                .expect("subspace");
            let out = std::process::Command::new("sh")
                .args(["-c", "echo $$; id -u"])
                .join(Join::new().subspace(&sub).expect("join"))
                .output()
                .expect("sh");
            println!(
                "{}",
                json!({"stdout": String::from_utf8_lossy(&out.stdout), "status": out.status.code()})
            );
            return;
        }
        Some("private-rooms") => {
            let spacer = Client::private().expect("private worker");
            let direct = outcome(spacer.rooms(Spaces::NET).map(drop));
            let (inside, sub) = spacer.subspace(Spaces::USER).expect("user subspace");
            let rooms = inside
                .rooms(Spaces::NET | Spaces::UTS)
                .expect("rooms inside");
            let user = ino(sub.user.as_ref().expect("user"));
            let owned = [rooms.net.as_ref(), rooms.uts.as_ref()].iter().all(|f| {
                let owner = fd::owning_user_namespace(f.expect("room").as_fd()).expect("owner");
                ino(&owner) == user
            });
            println!(
                "{}",
                json!({"direct": direct, "inside_owned_by_subspace": owned})
            );
            return;
        }
        _ => {}
    }
    // Opened on first use only: connection caps count every connection.
    let cell = std::cell::OnceCell::new();
    let client = || cell.get_or_init(|| Client::connect_default().expect("connect"));
    let out: Value = match args.first().map(String::as_str) {
        Some("subspace") => {
            let pid = args.iter().any(|a| a == "--pid");
            let rooms = Spaces::of(args.iter().skip(1).filter_map(|a| NsType::from_name(a)));
            let spaces = if pid {
                Spaces::USER | Spaces::PID
            } else {
                Spaces::USER
            };
            let (sub_client, sub) = client().subspace(spaces).expect("subspace");
            let user = sub.user.as_ref().expect("user namespace");
            let worker = pid_of(&sub.pidfd);
            let read = |f: &str| {
                std::fs::read_to_string(format!("/proc/{worker}/{f}")).unwrap_or_default()
            };
            let mut room_facts = serde_json::Map::new();
            if !rooms.is_empty() {
                let made = sub_client.rooms(rooms).expect("rooms inside the subspace");
                for t in rooms.types() {
                    let f = made.get(t).expect("asked for");
                    let owner = fd::owning_user_namespace(f.as_fd()).expect("owner");
                    room_facts.insert(
                        t.name().into(),
                        json!({"ino": ino(f), "owner_userns": ino(&owner)}),
                    );
                }
            }
            json!({
                "owner_uid": fd::user_namespace_owner(user.as_fd()).expect("owner uid"),
                "user_ino": ino(user),
                "pid_ino": sub.pid.as_ref().map(ino),
                "pid_owner_userns": sub.pid.as_ref().map(|p| {
                    ino(&fd::owning_user_namespace(p.as_fd()).expect("pid owner"))
                }),
                "worker_pid": worker,
                "uid_map": read("uid_map").trim(),
                "gid_map": read("gid_map").trim(),
                "setgroups": read("setgroups").trim(),
                "rooms": room_facts,
            })
        }
        Some("nested") => {
            let (middle, m_sub) = client().subspace(Spaces::USER).expect("middle subspace");
            let (inner, i_sub) = middle.subspace(Spaces::USER).expect("inner subspace");
            let middle_user = ino(m_sub.user.as_ref().expect("user"));
            let inner_parent = fd::parent_namespace(i_sub.user.as_ref().expect("user").as_fd())
                .map(|p| ino(&p))
                .ok();
            // Closing the middle subspace's connection ends its worker...
            drop(middle);
            let middle_exited = exited(m_sub.pidfd.as_fd(), Duration::from_secs(5));
            // ...and leaves the inner one serving.
            let rooms = inner.rooms(Spaces::UTS);
            json!({
                "inner_inside_middle": inner_parent == Some(middle_user),
                "middle_exited": middle_exited,
                "inner_serves": rooms.is_ok(),
                "inner_error": rooms.err().map(|e| e.to_string()),
            })
        }
        Some("close") => {
            let (c, sub) = client()
                .subspace(Spaces::USER | Spaces::PID)
                .expect("subspace");
            let pid = pid_of(&sub.pidfd);
            drop(c);
            let gone = exited(sub.pidfd.as_fd(), Duration::from_secs(5));
            // Reaped: no zombie left under that pid.
            let reaped = gone
                && (0..300).any(
                    |_| match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                        Err(_) => true,
                        Ok(st)
                            if !st
                                .rsplit(')')
                                .next()
                                .is_some_and(|r| r.trim_start().starts_with('Z')) =>
                        {
                            true
                        }
                        Ok(_) => {
                            std::thread::sleep(Duration::from_millis(10));
                            false
                        }
                    },
                );
            json!({"worker_pid": pid, "exited": gone, "reaped": reaped})
        }
        Some("many") => {
            let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
            for _ in 0..n {
                let (c, sub) = client()
                    .subspace(Spaces::USER | Spaces::PID)
                    .expect("subspace");
                drop(c);
                assert!(exited(sub.pidfd.as_fd(), Duration::from_secs(5)));
            }
            json!({"made": n})
        }
        Some("conns-hold") => {
            // To the socket itself (never a subspace's SPACER_FD): N
            // connections held at once for SECS, one uts request on each.
            let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
            let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0.0);
            let t0 = std::time::Instant::now();
            let path = std::env::var_os("SPACER_SOCKET").expect("SPACER_SOCKET");
            let conns: Vec<_> = (0..n)
                .map(|_| Client::connect(std::path::Path::new(&path)).expect("connect"))
                .collect();
            let outcomes: Vec<String> = conns
                .iter()
                .map(|c| outcome(c.rooms(Spaces::UTS).map(drop)))
                .collect();
            std::thread::sleep(Duration::from_secs_f64(secs).saturating_sub(t0.elapsed()));
            drop(conns);
            json!({"uid": nix::unistd::getuid().as_raw(), "outcomes": outcomes})
        }
        Some("as-ids") => {
            // Run as root of a user namespace with more ids mapped: one
            // `conns-hold N SECS` as each of the uids (and gids) 1..=K at
            // once; every outcome together.
            let k: u32 = args.get(1).and_then(|s| s.parse().ok()).expect("K");
            let exe = std::env::current_exe().expect("own path");
            let children: Vec<_> = (1..=k)
                .map(|id| {
                    use std::os::unix::process::CommandExt;
                    std::process::Command::new(&exe)
                        .arg("conns-hold")
                        .args(&args[2..])
                        .uid(id)
                        .gid(id)
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::piped())
                        .spawn()
                        .expect("spawn as another id")
                })
                .collect();
            let mut outcomes = Vec::new();
            for c in children {
                let out = c.wait_with_output().expect("wait");
                assert!(out.status.success(), "conns-hold failed");
                let v: Value = serde_json::from_slice(&out.stdout).expect("json");
                outcomes.extend(v["outcomes"].as_array().expect("outcomes").iter().cloned());
            }
            json!({ "outcomes": outcomes })
        }
        Some("conns") => {
            let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
            let conns: Vec<_> = (0..n)
                .map(|_| Client::connect_default().expect("connect"))
                .collect();
            let outcomes: Vec<String> = conns
                .iter()
                .map(|c| outcome(c.rooms(Spaces::UTS).map(drop)))
                .collect();
            json!({"outcomes": outcomes})
        }
        Some("subspaces") => {
            let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
            let mut held = Vec::new();
            let mut outcomes = Vec::new();
            for _ in 0..n {
                match client().subspace(Spaces::USER) {
                    Ok(s) => {
                        held.push(s);
                        outcomes.push("ok".to_owned());
                    }
                    Err(e) => outcomes.push(outcome::<()>(Err(e))),
                }
            }
            // Close one and wait for its worker to end: the count is released.
            let after_close = match held.pop() {
                Some((c, sub)) => {
                    drop(c);
                    assert!(exited(sub.pidfd.as_fd(), Duration::from_secs(5)));
                    // The broker notices the end a moment later.
                    let mut r = String::new();
                    for _ in 0..100 {
                        r = outcome(client().subspace(Spaces::USER).map(drop));
                        if r == "ok" {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    r
                }
                None => "nothing held".to_owned(),
            };
            json!({"outcomes": outcomes, "after_close": after_close})
        }
        Some("depth") => {
            let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
            let mut chain: Vec<Client> = Vec::new();
            let mut reached = 0;
            let mut refusal = String::new();
            for _ in 0..n {
                let parent = chain.last().unwrap_or_else(|| client());
                match parent.subspace(Spaces::USER) {
                    Ok((c, _)) => {
                        reached += 1;
                        chain.push(c);
                    }
                    Err(e) => {
                        refusal = outcome::<()>(Err(e));
                        break;
                    }
                }
            }
            json!({"reached": reached, "refusal": refusal})
        }
        Some("race") => {
            let a = Client::connect_default().expect("connect");
            let b = Client::connect_default().expect("connect");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let t = {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    outcome(b.rooms(Spaces::UTS).map(drop))
                })
            };
            barrier.wait();
            let first = outcome(a.rooms(Spaces::UTS).map(drop));
            let second = t.join().expect("thread");
            json!({"outcomes": [first, second]})
        }
        Some("pass") => {
            let uid: u32 = args.get(1).and_then(|s| s.parse().ok()).expect("uid");
            let orphan = args.iter().any(|a| a == "--orphan");
            pass(uid, orphan);
            return;
        }
        Some("receive") => receive(args.get(1).expect("path")),
        Some("time-rooms") => {
            use spacer_client::{CommandExt, Join, Offset, RoomOptions};
            let (mut inside, mut sub) = client().subspace(Spaces::USER).expect("subspace");
            let me = std::env::current_exe().expect("own path");
            let mut seen = Vec::new();
            let mut outer = Vec::new();
            for a in &args[1..] {
                if a == "nested" {
                    let nested = inside.subspace(Spaces::USER).expect("nested subspace");
                    outer.push((
                        std::mem::replace(&mut inside, nested.0),
                        std::mem::replace(&mut sub, nested.1),
                    ));
                    continue;
                }
                let offset: Offset = a.parse().expect("an offset");
                let rooms = inside
                    .rooms_with(Spaces::TIME, &RoomOptions::new().monotonic_offset(offset))
                    .expect("a time room");
                let join = Join::new()
                    .subspace(&sub)
                    .and_then(|j| j.rooms(&rooms))
                    .expect("join");
                let out = std::process::Command::new(&me)
                    .arg("clocks")
                    .join(join)
                    .output()
                    .expect("clocks");
                let v: Value = serde_json::from_slice(&out.stdout).expect("clocks output");
                seen.push(v["monotonic"].clone());
            }
            json!({"monotonic": seen})
        }
        Some("soak") => {
            let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100);
            soak(client(), n)
        }
        Some("flood-net") => {
            let conns: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(64);
            let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3.0);
            let end = std::time::Instant::now() + Duration::from_secs_f64(secs);
            let threads: Vec<_> = (0..conns)
                .map(|_| {
                    std::thread::spawn(move || {
                        let c = Client::connect_default().expect("connect");
                        let mut n = 0u64;
                        while std::time::Instant::now() < end {
                            if c.rooms(Spaces::NET).is_ok() {
                                n += 1;
                            }
                        }
                        n
                    })
                })
                .collect();
            let made: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
            println!("{}", json!({"made": made}));
            return;
        }
        Some("latency") => {
            let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100);
            let c = client();
            let mut us: Vec<u64> = (0..n)
                .map(|_| {
                    let t = std::time::Instant::now();
                    c.rooms(Spaces::UTS).expect("uts room");
                    let d = t.elapsed().as_micros() as u64;
                    std::thread::sleep(Duration::from_millis(5));
                    d
                })
                .collect();
            us.sort_unstable();
            println!("{}", json!({"p50_us": us[n / 2], "max_us": us[n - 1]}));
            return;
        }
        Some("hold-net") => {
            let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
            let c = client();
            let mut held = Vec::new();
            let mut denial = Value::Null;
            for _ in 0..n {
                match c.rooms(Spaces::NET) {
                    Ok(r) => held.push(r.net.expect("net fd")),
                    Err(e) => {
                        denial = json!(e.to_string());
                        break;
                    }
                }
            }
            let count = held.len();
            // Given to a child that keeps them: they still count.
            let more = outcome(c.rooms(Spaces::NET).map(drop));
            held.truncate(count.saturating_sub(3));
            let end = std::time::Instant::now() + Duration::from_secs(5);
            let after_drop = loop {
                let o = outcome(c.rooms(Spaces::NET).map(|r| held.push(r.net.expect("net"))));
                if o == "ok" || std::time::Instant::now() > end {
                    break o;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            println!(
                "{}",
                json!({"held": count, "denial": denial, "more": more, "after_drop": after_drop})
            );
            return;
        }
        Some("stop-close") => {
            let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
            let (mut granted, mut max_alive) = (0, 0);
            let mut workers = Vec::new();
            for _ in 0..n {
                // Its slot frees once the last one is really gone: retry
                // while max_subspaces says no.
                let end = std::time::Instant::now() + Duration::from_secs(5);
                let got = loop {
                    match client().subspace(Spaces::USER) {
                        Ok(s) => break Some(s),
                        Err(e)
                            if e.to_string().contains("max_subspaces")
                                && std::time::Instant::now() < end =>
                        {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(_) => break None,
                    }
                };
                let Some((conn, sub)) = got else { break };
                granted += 1;
                fd::pidfd_send_signal(sub.pidfd.as_fd(), libc::SIGSTOP).expect("SIGSTOP");
                workers.push(sub.pidfd);
                // Counted through the pidfds this probe was given: other
                // tests may run workers as the same uid meanwhile.
                let alive = workers
                    .iter()
                    .filter(|p| !exited(p.as_fd(), Duration::ZERO))
                    .count();
                max_alive = max_alive.max(alive);
                drop(conn);
            }
            let all_gone = workers
                .iter()
                .all(|p| exited(p.as_fd(), Duration::from_secs(5)));
            println!(
                "{}",
                json!({"granted": granted, "max_alive": max_alive, "all_gone": all_gone})
            );
            return;
        }
        Some("seize-race") => {
            use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
            use std::sync::Arc;
            let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(50);
            let stop = Arc::new(AtomicBool::new(false));
            let attempts = Arc::new(AtomicUsize::new(0));
            let attached = Arc::new(AtomicUsize::new(0));
            let on_subspace = Arc::new(AtomicUsize::new(0));
            let tracer = {
                let (stop, attempts, attached, on_subspace) = (
                    stop.clone(),
                    attempts.clone(),
                    attached.clone(),
                    on_subspace.clone(),
                );
                std::thread::spawn(move || {
                    let me = std::process::id() as i32;
                    while !stop.load(Ordering::Relaxed) {
                        for pid in worker_pids() {
                            if pid == me {
                                continue;
                            }
                            attempts.fetch_add(1, Ordering::Relaxed);
                            if std::fs::read_to_string(format!("/proc/{pid}/comm"))
                                .is_ok_and(|c| c.trim() == "spacer-subspace")
                            {
                                on_subspace.fetch_add(1, Ordering::Relaxed);
                            }
                            let target = nix::unistd::Pid::from_raw(pid);
                            if nix::sys::ptrace::seize(target, nix::sys::ptrace::Options::empty())
                                .is_ok()
                            {
                                attached.fetch_add(1, Ordering::Relaxed);
                                let _ = nix::sys::ptrace::detach(target, None);
                            }
                        }
                    }
                })
            };
            let mut made = 0;
            for _ in 0..n {
                let Ok((outer, _s)) = client().subspace(Spaces::USER) else {
                    continue;
                };
                // Nested: the window the attack aimed at.
                if let Ok((inner, _n)) = outer.subspace(Spaces::USER) {
                    made += 1;
                    let _ = inner.rooms(Spaces::UTS);
                }
            }
            stop.store(true, Ordering::Relaxed);
            tracer.join().expect("tracer");
            println!(
                "{}",
                json!({"nested": made, "attempts": attempts.load(Ordering::Relaxed),
                       "attempts_on_subspace_workers": on_subspace.load(Ordering::Relaxed),
                       "attached": attached.load(Ordering::Relaxed)})
            );
            return;
        }
        Some("stop-storm") => {
            use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
            let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            let hits = std::sync::Arc::new(AtomicUsize::new(0));
            let storm = {
                let (stop, hits) = (stop.clone(), hits.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // kill(-1, ...) reaches every process this uid may
                        // signal, except this one (ESRCH: none).
                        if nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(-1),
                            nix::sys::signal::Signal::SIGSTOP,
                        )
                        .is_ok()
                        {
                            hits.fetch_add(1, Ordering::Relaxed);
                        }
                        std::thread::yield_now();
                    }
                })
            };
            let mut outcomes = Vec::new();
            let mut took_ms = Vec::new();
            let mut rooms = Vec::new();
            let mut held = Vec::new();
            for _ in 0..n {
                let t = std::time::Instant::now();
                match client().subspace(Spaces::USER) {
                    Ok(s) => {
                        outcomes.push("ok".to_owned());
                        held.push(s);
                    }
                    Err(e) => outcomes.push(e.to_string()),
                }
                took_ms.push(t.elapsed().as_millis() as u64);
                // Room workers are never this uid's to signal.
                rooms.push(outcome(client().rooms(Spaces::UTS).map(drop)));
            }
            // A subspace worker handed out is this uid's: the storm reaches
            // it. Wait for that, so the count below never depends on luck.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while hits.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            stop.store(true, Ordering::Relaxed);
            storm.join().expect("storm");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(-1),
                nix::sys::signal::Signal::SIGCONT,
            );
            for (_, sub) in &held {
                let _ = fd::pidfd_send_signal(sub.pidfd.as_fd(), libc::SIGKILL);
            }
            drop(held);
            // Once the storm is over, the service serves this uid again.
            let after = outcome(client().subspace(Spaces::USER).map(drop));
            json!({
                "outcomes": outcomes,
                "took_ms": took_ms,
                "rooms": rooms,
                "stopped": hits.load(Ordering::Relaxed),
                "after": after,
            })
        }
        Some("limit-net") => {
            use spacer_client::{CommandExt, Join};
            let (inside, sub) = client().subspace(Spaces::USER).expect("subspace");
            let st = std::process::Command::new("sh")
                .args(["-c", "echo 0 > /proc/sys/user/max_net_namespaces"])
                .join(Join::new().subspace(&sub).expect("join"))
                .status()
                .expect("sh");
            assert!(st.success(), "cannot lower the limit inside the subspace");
            let worker = pid_of(&sub.pidfd);
            let before = std::fs::read_dir(format!("/proc/{worker}/fd"))
                .map(|d| d.count())
                .unwrap_or(0);
            let mut outcomes = vec![outcome(inside.rooms(Spaces::ROOMS).map(drop))];
            let after = std::fs::read_dir(format!("/proc/{worker}/fd"))
                .map(|d| d.count())
                .unwrap_or(0);
            for _ in 0..4 {
                outcomes.push(outcome(inside.rooms(Spaces::UTS).map(drop)));
            }
            json!({"outcomes": outcomes, "worker_fds_before": before, "worker_fds_after": after})
        }
        Some("rooms") => {
            let spaces = Spaces::of(args.iter().skip(1).filter_map(|a| NsType::from_name(a)));
            json!({"outcome": outcome(client().rooms(spaces).map(drop))})
        }
        _ => {
            eprintln!(
                "usage: spacer-probe subspace|nested|close|many|conns|subspaces|depth|race|rooms"
            );
            std::process::exit(2);
        }
    };
    println!("{out}");
}
