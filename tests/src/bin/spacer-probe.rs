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

fn ino(f: &OwnedFd) -> u64 {
    fd::namespace_inode(f.as_fd()).expect("namespace inode")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let client = Client::connect_default().expect("connect");
    let out: Value = match args.first().map(String::as_str) {
        Some("subspace") => {
            let pid = args.iter().any(|a| a == "--pid");
            let rooms = Spaces::of(args.iter().skip(1).filter_map(|a| NsType::from_name(a)));
            let spaces = if pid {
                Spaces::USER | Spaces::PID
            } else {
                Spaces::USER
            };
            let (sub_client, sub) = client.subspace(spaces).expect("subspace");
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
            let (middle, m_sub) = client.subspace(Spaces::USER).expect("middle subspace");
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
            let (c, sub) = client
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
                let (c, sub) = client
                    .subspace(Spaces::USER | Spaces::PID)
                    .expect("subspace");
                drop(c);
                assert!(exited(sub.pidfd.as_fd(), Duration::from_secs(5)));
            }
            json!({"made": n})
        }
        _ => {
            eprintln!("usage: spacer-probe subspace|nested|close|many");
            std::process::exit(2);
        }
    };
    println!("{out}");
}
