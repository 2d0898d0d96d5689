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
//! `spacer-probe conns N`: N connections held open at once, one uts request
//! on each; prints each outcome.
//! `spacer-probe subspaces N`: N subspaces held open at once; then one
//! closed and one more asked for.
//! `spacer-probe depth N`: subspaces nested N deep, until one is refused.
//! `spacer-probe race`: two connections send a uts request at the same
//! moment; prints both outcomes.

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

fn exited(pidfd: BorrowedFd<'_>, within: Duration) -> bool {
    let mut p = [PollFd::new(pidfd, PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(within.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    matches!(nix::poll::poll(&mut p, ms), Ok(n) if n > 0)
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
