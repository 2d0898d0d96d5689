//! Private mode: a worker of the test's own, no broker, and the helpers
//! that run code inside namespaces from a multi-threaded test process.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use spacer_client::{run_in, Client, CommandExt, Error, Join, Spaces};
use spacer_proto::fd;
use spacer_tests::*;

fn thread_net_inode() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

fn pid_of(pidfd: &std::os::fd::OwnedFd) -> i32 {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Pid:").map(|v| v.trim().parse().unwrap()))
        .unwrap()
}

#[test]
fn closure_in_a_private_net_room_sees_only_lo_and_the_test_thread_is_untouched() {
    need_root();
    let spacer = Client::private().unwrap();
    let rooms = spacer
        .rooms(Spaces::NET | Spaces::UTS | Spaces::MNT)
        .unwrap();
    let room_ino = fd::namespace_inode(rooms.net.as_ref().unwrap().as_fd()).unwrap();
    let before = thread_net_inode();
    let (inside_ino, dev) = run_in(&rooms, || {
        (
            thread_net_inode(),
            std::fs::read_to_string("/proc/thread-self/net/dev").unwrap(),
        )
    })
    .unwrap();
    assert_eq!(inside_ino, room_ino);
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .map(|l| l.split(':').next().unwrap().trim())
        .collect();
    assert_eq!(ifaces, vec!["lo"]);
    assert_eq!(
        thread_net_inode(),
        before,
        "the test's own thread stays in the host's namespace"
    );
    assert_ne!(before, room_ino);
}

#[test]
fn time_rooms_are_refused_by_run_in_with_the_reason() {
    need_root();
    let spacer = Client::private().unwrap();
    let rooms = spacer.rooms(Spaces::TIME).unwrap();
    let e = run_in(&rooms, || ()).unwrap_err();
    assert!(matches!(&e, Error::Join { .. }), "{e}");
}

#[test]
fn command_in_a_private_subspace_is_pid_1_and_uid_0_as_root() {
    need_root();
    let spacer = Client::private().unwrap();
    let (_inside, sub) = spacer.subspace(Spaces::USER | Spaces::PID).unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", "echo $$; id -u"])
        .join(Join::new().subspace(&sub).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n0\n");
    // A PID namespace has one PID 1: once it exited, nothing can join.
    let late = std::process::Command::new("true")
        .join(Join::new().subspace(&sub).unwrap())
        .status();
    assert!(late.is_err(), "{late:?}");
    // The program's exit status comes through.
    let (_inside, sub) = spacer.subspace(Spaces::USER | Spaces::PID).unwrap();
    let st = std::process::Command::new("sh")
        .args(["-c", "exit 9"])
        .join(Join::new().subspace(&sub).unwrap())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(9));
}

#[test]
fn command_in_a_private_subspace_is_pid_1_and_uid_0_unprivileged() {
    need_root();
    let dir = open_dir();
    let worker = copy_bin_to(dir.path(), "spacer-private-worker");
    let v = probe_in(
        dir.path(),
        TENANT,
        TENANT,
        &["private-sh"],
        &[("SPACER_PRIVATE_WORKER", &worker)],
    )
    .unwrap();
    assert_eq!(v["stdout"], "1\n0\n", "{v}");
    assert_eq!(v["status"], 0);
}

#[test]
fn unprivileged_private_worker_says_why_rooms_need_a_subspace() {
    need_root();
    let dir = open_dir();
    let worker = copy_bin_to(dir.path(), "spacer-private-worker");
    let v = probe_in(
        dir.path(),
        TENANT,
        TENANT,
        &["private-rooms"],
        &[("SPACER_PRIVATE_WORKER", &worker)],
    )
    .unwrap();
    let direct = v["direct"].as_str().unwrap();
    assert!(
        direct.starts_with("failed: creating net namespace: EPERM"),
        "{direct}"
    );
    assert!(direct.contains("ask for a user subspace first"), "{direct}");
    assert_eq!(v["inside_owned_by_subspace"], true);
}

#[test]
fn dropping_the_client_ends_the_private_worker_and_every_subspace_worker() {
    need_root();
    let spacer = Client::private().unwrap();
    let worker = fd::pidfd_open(spacer.private_worker_pid().unwrap() as i32).unwrap();
    let (middle, m) = spacer.subspace(Spaces::USER | Spaces::PID).unwrap();
    let (inner, i) = middle.subspace(Spaces::USER).unwrap();
    let pids = [
        spacer.private_worker_pid().unwrap() as i32,
        pid_of(&m.pidfd),
        pid_of(&i.pidfd),
    ];
    assert!(inner.rooms(Spaces::UTS).is_ok());
    // Only the top client goes; the subspace clients are still held.
    drop(spacer);
    for pidfd in [worker.as_fd(), m.pidfd.as_fd(), i.pidfd.as_fd()] {
        assert!(
            exits_within(pidfd, Duration::from_secs(3)),
            "a worker outlived its private client: {pids:?}"
        );
    }
    // Reaped, not zombies.
    for pid in pids {
        assert!(
            eventually(Duration::from_secs(2), || !Path::new(&format!(
                "/proc/{pid}"
            ))
            .exists()),
            "{pid}: {}",
            status(pid, "State")
        );
    }
    assert!(inner.rooms(Spaces::UTS).is_err());
    drop(middle);
}

#[test]
fn closing_a_private_subspace_leaves_its_parent_serving() {
    need_root();
    let spacer = Client::private().unwrap();
    let (inside, sub) = spacer.subspace(Spaces::USER).unwrap();
    drop(inside);
    assert!(exits_within(sub.pidfd.as_fd(), Duration::from_secs(3)));
    assert!(spacer.rooms(Spaces::NET).is_ok());
}

#[test]
fn spawn_with_a_pid_namespace_returns_at_exec_and_pipes_work() {
    need_root();
    let spacer = Client::private().unwrap();
    let (_inside, sub) = spacer.subspace(Spaces::USER | Spaces::PID).unwrap();
    let mut child = std::process::Command::new("sleep")
        .arg("5")
        .join(Join::new().subspace(&sub).unwrap())
        .spawn()
        .unwrap();
    // spawn() came back while the program still runs.
    assert!(child.try_wait().unwrap().is_none());
    child.kill().unwrap();
    child.wait().unwrap();
    // A program writing a lot through a pipe.
    let (_inside, sub) = spacer.subspace(Spaces::USER | Spaces::PID).unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", "head -c 200000 /dev/zero"])
        .join(Join::new().subspace(&sub).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 200_000);
}
