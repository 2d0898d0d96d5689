//! The worker binary on its own: refuses to run by hand, confines itself,
//! serves rooms and subspaces, keeps its own namespaces. Needs root.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command};

use spacer_core::internal::{
    self, SupervisorReply, SupervisorRequest, Trust, WorkerKind, WorkerReply, WorkerRequest,
};
use spacer_core::{fd, launch, Channel, Spaces};

const WORKER: &str = env!("CARGO_BIN_EXE_spacer-worker");

fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates namespaces and needs root (CI runs as root)"
    );
}

struct Supervisor {
    child: Child,
    chan: Channel,
}

impl Supervisor {
    fn start(extra: &[&str]) -> Supervisor {
        let (mine, theirs) = Channel::pair().unwrap();
        let theirs: OwnedFd = theirs.into();
        let child = launch::worker_command(Path::new(WORKER), theirs)
            .args(extra)
            .spawn()
            .unwrap();
        Supervisor { child, chan: mine }
    }

    fn spawn_worker(&self) -> (i32, Channel, OwnedFd) {
        self.spawn(WorkerKind::Rooms)
    }

    fn spawn(&self, kind: WorkerKind) -> (i32, Channel, OwnedFd) {
        self.chan
            .send_msg(&SupervisorRequest::Spawn { kind }, &[])
            .unwrap();
        let (reply, fds) = self
            .chan
            .recv_msg::<SupervisorReply>(&mut [0; internal::MAX_BYTES], Trust::Kinds)
            .unwrap()
            .unwrap();
        let SupervisorReply::Spawned { pid } = reply else {
            panic!("spawn failed: {reply:?}")
        };
        let mut fds = fds.into_iter();
        let chan = Channel::from_fd(fds.next().unwrap()).unwrap();
        (pid, chan, fds.next().unwrap())
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn call(chan: &Channel, req: &WorkerRequest) -> (WorkerReply, Vec<OwnedFd>) {
    call_with(chan, req, &[])
}

fn call_with(
    chan: &Channel,
    req: &WorkerRequest,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> (WorkerReply, Vec<OwnedFd>) {
    chan.send_msg(req, fds).unwrap();
    chan.recv_msg::<WorkerReply>(&mut [0; internal::MAX_BYTES], Trust::Kinds)
        .unwrap()
        .unwrap()
}

/// A round trip that makes nothing: once it is answered, the worker has
/// finished (and closed its copies of the fds of) everything before it.
fn barrier(chan: &Channel) {
    let (reply, _) = call(
        chan,
        &WorkerRequest::Rooms {
            id: 0,
            spaces: 0,
            options: Default::default(),
            uid: 0,
            caller: false,
        },
    );
    assert!(matches!(reply, WorkerReply::Invalid { .. }));
}

fn ns_links(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/ns"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                std::fs::read_link(e.path()).unwrap().display()
            )
        })
        .collect();
    v.sort();
    v
}

fn status(pid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap()
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn refuses_to_run_by_hand() {
    let out = Command::new(WORKER).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never by hand"));
    // An fd number that is not a socket to the parent.
    let version = internal::VERSION.to_string();
    let out = Command::new(WORKER)
        .args(["--channel-fd", "3", "--internal-version", &version])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("channel"));
}

#[test]
fn refuses_a_caller_of_another_internal_protocol() {
    // A caller from another build passes another version, or none.
    let other = (internal::VERSION + 1).to_string();
    for args in [
        &["--channel-fd", "3", "--internal-version", other.as_str()][..],
        &["--channel-fd", "3"][..],
    ] {
        let out = Command::new(WORKER).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("internal protocol"), "{err}");
        assert!(
            err.contains("same build") || err.contains("another build"),
            "{err}"
        );
    }
}

#[test]
fn serves_all_six_rooms_and_stays_home() {
    need_root();
    let sup = Supervisor::start(&[]);
    let (pid, chan, _pidfd) = sup.spawn_worker();
    barrier(&chan);
    let before = ns_links(pid);
    let fds_before = fd_count(pid);
    for _ in 0..50 {
        let (reply, fds) = call(
            &chan,
            &WorkerRequest::Rooms {
                id: 7,
                spaces: Spaces::ROOMS.bits(),
                options: Default::default(),
                uid: 0,
                caller: false,
            },
        );
        let WorkerReply::Rooms {
            id: 7,
            types,
            inodes,
        } = reply
        else {
            panic!("{reply:?}")
        };
        assert_eq!(Spaces::of(types.iter().copied()), Spaces::ROOMS);
        for ((t, f), ino) in types.iter().zip(&fds).zip(&inodes) {
            assert_eq!(
                fd::namespace_inode(f.as_fd()).unwrap(),
                *ino,
                "reported inode of {t}"
            );
            let mine = std::fs::File::open(format!("/proc/self/ns/{}", t.name())).unwrap();
            assert_ne!(
                fd::namespace_inode(f.as_fd()).unwrap(),
                fd::namespace_inode(mine.as_fd()).unwrap(),
                "{t} is not new"
            );
        }
    }
    barrier(&chan);
    assert_eq!(ns_links(pid), before);
    assert_eq!(fd_count(pid), fds_before);
    assert_eq!(status(pid, "NoNewPrivs"), "1");
    assert_eq!(status(pid, "Seccomp"), "2");
    // Effective: CAP_SETGID(6) CAP_SETUID(7) CAP_SYS_CHROOT(18) CAP_SYS_ADMIN(21);
    // permitted and bounding add CAP_KILL(5), CAP_NET_ADMIN(12), CAP_SYS_PTRACE(19),
    // CAP_SYS_TIME(25),
    // CAP_SETFCAP(31).
    assert_eq!(status(pid, "CapEff"), "00000000002400c0");
    assert_eq!(status(pid, "CapPrm"), "00000000822c10e0");
    assert_eq!(status(pid, "CapBnd"), "00000000822c10e0");
    assert_eq!(status(pid, "CapInh"), "0000000000000000");
}

#[test]
fn makes_rooms_as_the_requester_and_tells_which_are_still_alive() {
    use spacer_core::NsType;
    need_root();
    let sup = Supervisor::start(&[]);
    let (pid, chan, _pidfd) = sup.spawn_worker();
    barrier(&chan);
    let home = ns_links(pid);
    let (reply, fds) = call(
        &chan,
        &WorkerRequest::Rooms {
            id: 1,
            spaces: (Spaces::NET | Spaces::MNT | Spaces::TIME).bits(),
            options: spacer_core::RoomOptions::new()
                .monotonic_offset(spacer_core::Offset::from_secs(5)),
            uid: 4242,
            caller: false,
        },
    );
    let WorkerReply::Rooms { types, .. } = reply else {
        panic!("{reply:?}")
    };
    // Back to uid 0 in every id, capabilities as they were.
    assert_eq!(status(pid, "Uid"), "0\t0\t0\t0");
    assert_eq!(status(pid, "CapEff"), "00000000002400c0");
    assert_eq!(ns_links(pid), home);
    let net = types
        .iter()
        .zip(fds)
        .find(|(t, _)| **t == NsType::Net)
        .unwrap()
        .1;
    let handle = fd::namespace_handle(net.as_fd()).unwrap();
    let ask = |id| {
        call(
            &chan,
            &WorkerRequest::Alive {
                id,
                nstype: NsType::Net,
                rooms: vec![handle, (u64::MAX, 1)],
            },
        )
        .0
    };
    assert_eq!(
        ask(2),
        WorkerReply::Alive {
            id: 2,
            alive: vec![true, false]
        }
    );
    drop(net);
    // A net namespace is torn down in the background after its last close.
    let mut last = ask(3);
    for i in 4..500 {
        if last
            == (WorkerReply::Alive {
                id: i - 1,
                alive: vec![false, false],
            })
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        last = ask(i);
    }
    assert!(
        matches!(&last, WorkerReply::Alive { alive, .. } if alive == &[false, false]),
        "{last:?}"
    );
}

#[test]
fn rechecks_spaces_itself() {
    need_root();
    let sup = Supervisor::start(&[]);
    let (_pid, chan, _pidfd) = sup.spawn_worker();
    for (spaces, reason) in [
        (0, "no space requested"),
        (Spaces::USER.bits(), "out of space"),
        (libc::CLONE_VM as u64, "out of space"),
    ] {
        let (reply, fds) = call(
            &chan,
            &WorkerRequest::Rooms {
                id: 1,
                spaces,
                options: Default::default(),
                uid: 0,
                caller: false,
            },
        );
        assert_eq!(
            reply,
            WorkerReply::Invalid {
                id: 1,
                reason: reason.into()
            }
        );
        assert!(fds.is_empty());
    }
    // The rooms worker starts no subspace.
    let (reply, _) = call(
        &chan,
        &WorkerRequest::Subspace {
            id: 2,
            spaces: Spaces::USER.bits(),
            uid: 0,
            gid: 0,
            parent: false,
            caller: false,
            maps: None,
        },
    );
    assert!(matches!(reply, WorkerReply::Invalid { id: 2, .. }));
    let (_pid, spawner, _pidfd) = sup.spawn(WorkerKind::Subspaces);
    let (reply, _) = call(
        &spawner,
        &WorkerRequest::Subspace {
            id: 2,
            spaces: Spaces::NET.bits(),
            uid: 0,
            gid: 0,
            parent: false,
            caller: false,
            maps: None,
        },
    );
    assert!(matches!(reply, WorkerReply::Invalid { id: 2, .. }));
    // The spawner maps no id it was not asked for in a way it accepts:
    // host uid 0 beside the requester's, lines that overlap, a first line
    // that is not the requester, maps without a user namespace.
    let line = |inside, outside, count| spacer_core::Extent {
        inside,
        outside,
        count,
    };
    for (maps, spaces, reason) in [
        (
            vec![line(0, 4343, 1), line(1, 0, 100)],
            Spaces::USER,
            "the uid map names uid 0 of the host",
        ),
        (
            vec![line(0, 4343, 1), line(1, 4000, 1000)],
            Spaces::USER,
            "the uid map's lines overlap",
        ),
        (
            vec![line(0, 4344, 1)],
            Spaces::USER,
            "the uid map does not start with the requester's uid",
        ),
        (
            vec![line(0, 4343, 1)],
            Spaces::PID,
            "id maps need a new user namespace",
        ),
    ] {
        let (reply, fds) = call(
            &spawner,
            &WorkerRequest::Subspace {
                id: 3,
                spaces: spaces.bits(),
                uid: 4343,
                gid: 4343,
                parent: false,
                caller: false,
                maps: Some(spacer_core::IdMaps {
                    uid: maps,
                    gid: vec![line(0, 4343, 1)],
                }),
            },
        );
        assert_eq!(
            reply,
            WorkerReply::Invalid {
                id: 3,
                reason: reason.into()
            }
        );
        assert!(fds.is_empty());
    }
    // The spawner makes no rooms.
    let (reply, _) = call(
        &spawner,
        &WorkerRequest::Rooms {
            id: 5,
            spaces: Spaces::UTS.bits(),
            options: Default::default(),
            uid: 0,
            caller: false,
        },
    );
    assert!(matches!(reply, WorkerReply::Invalid { id: 5, .. }));
    // A "parent" that is no user namespace.
    let net = std::fs::File::open("/proc/self/ns/net").unwrap();
    let (reply, _) = call_with(
        &spawner,
        &WorkerRequest::Subspace {
            id: 6,
            spaces: Spaces::USER.bits(),
            uid: 65534,
            gid: 65534,
            parent: true,
            caller: false,
            maps: None,
        },
        &[net.as_fd()],
    );
    assert!(
        matches!(reply, WorkerReply::Invalid { id: 6, .. }),
        "{reply:?}"
    );
    // "-1" means "leave unchanged" to setresuid: never taken as an id.
    let (reply, fds) = call(
        &spawner,
        &WorkerRequest::Subspace {
            id: 3,
            spaces: Spaces::USER.bits(),
            uid: u32::MAX,
            gid: 0,
            parent: false,
            caller: false,
            maps: None,
        },
    );
    assert!(
        matches!(reply, WorkerReply::Invalid { id: 3, .. }),
        "{reply:?}"
    );
    assert!(fds.is_empty());
}

#[test]
fn rechecks_room_options_itself() {
    use spacer_core::{Offset, RoomOptions};
    need_root();
    let sup = Supervisor::start(&[]);
    let (pid, chan, _pidfd) = sup.spawn_worker();
    let home = ns_links(pid);
    for (spaces, options, reason) in [
        (
            Spaces::UTS,
            RoomOptions::new().hostname("-bad"),
            "invalid hostname",
        ),
        (
            Spaces::NET,
            RoomOptions::new().hostname("box"),
            "needs a new uts namespace",
        ),
        (
            Spaces::TIME,
            RoomOptions::new().boottime_offset(Offset::from_secs(i64::MAX)),
            "invalid boottime offset",
        ),
    ] {
        let (reply, fds) = call(
            &chan,
            &WorkerRequest::Rooms {
                id: 4,
                spaces: spaces.bits(),
                options,
                uid: 0,
                caller: false,
            },
        );
        match reply {
            WorkerReply::Invalid { id: 4, reason: r } => assert!(r.contains(reason), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(fds.is_empty());
    }
    assert_eq!(ns_links(pid), home);
}

#[test]
fn subspace_is_owned_by_the_requester_and_ends_when_told() {
    need_root();
    let sup = Supervisor::start(&[]);
    let (pid, chan, _pidfd) = sup.spawn(WorkerKind::Subspaces);
    barrier(&chan);
    let fds_before = fd_count(pid);
    let (reply, fds) = call(
        &chan,
        &WorkerRequest::Subspace {
            id: 3,
            spaces: (Spaces::USER | Spaces::PID).bits(),
            uid: 65534,
            gid: 65534,
            parent: false,
            caller: false,
            maps: None,
        },
    );
    let WorkerReply::Subspace {
        user: true,
        pid: true,
        worker_pid,
        ..
    } = reply
    else {
        panic!("{reply:?}")
    };
    assert_eq!(fd::user_namespace_owner(fds[2].as_fd()).unwrap(), 65534);
    let user_ns = fds[2].try_clone().unwrap();
    let worker_pidfd = fds[1].try_clone().unwrap();
    // Rooms through the subspace are owned by its user namespace.
    let sub = Channel::from_fd(fds.into_iter().next().unwrap()).unwrap();
    let (reply, room_fds) = call(
        &sub,
        &WorkerRequest::Rooms {
            id: 4,
            spaces: (Spaces::NET | Spaces::UTS | Spaces::MNT).bits(),
            options: Default::default(),
            uid: 0,
            caller: false,
        },
    );
    assert!(
        matches!(reply, WorkerReply::Rooms { id: 4, .. }),
        "{reply:?}"
    );
    // Served, so set up: the requester in all ids, confined, never dumpable.
    assert_eq!(status(worker_pid, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(status(worker_pid, "Seccomp"), "2");
    assert_eq!(status(worker_pid, "NoNewPrivs"), "1");
    for f in &room_fds {
        let owner = fd::owning_user_namespace(f.as_fd()).unwrap();
        assert_eq!(fd::user_namespace_owner(owner.as_fd()).unwrap(), 65534);
    }
    // A subspace worker starts no subspace itself: nesting is the
    // spawner's, in the parent's user namespace.
    let (reply, _) = call(
        &sub,
        &WorkerRequest::Subspace {
            id: 5,
            spaces: Spaces::USER.bits(),
            uid: 65534,
            gid: 65534,
            parent: false,
            caller: false,
            maps: None,
        },
    );
    assert!(
        matches!(reply, WorkerReply::Invalid { id: 5, .. }),
        "{reply:?}"
    );
    let (reply, nested) = call_with(
        &chan,
        &WorkerRequest::Subspace {
            id: 6,
            spaces: (Spaces::USER | Spaces::PID).bits(),
            uid: 65534,
            gid: 65534,
            parent: true,
            caller: false,
            maps: None,
        },
        &[user_ns.as_fd()],
    );
    let WorkerReply::Subspace {
        worker_pid: nested_pid,
        ..
    } = reply
    else {
        panic!("{reply:?}")
    };
    let parent = fd::parent_namespace(nested[2].as_fd()).unwrap();
    assert_eq!(
        fd::namespace_inode(parent.as_fd()).unwrap(),
        fd::namespace_inode(user_ns.as_fd()).unwrap(),
        "nested in the parent's user namespace"
    );
    let nested_sub = Channel::from_fd(nested.into_iter().next().unwrap()).unwrap();
    let (reply, _) = call(
        &nested_sub,
        &WorkerRequest::Rooms {
            id: 7,
            spaces: Spaces::UTS.bits(),
            options: Default::default(),
            uid: 0,
            caller: false,
        },
    );
    assert!(matches!(reply, WorkerReply::Rooms { .. }), "{reply:?}");
    // Served, so set up (it becomes the requester right after `Ready`).
    assert_eq!(status(nested_pid, "Uid"), "65534\t65534\t65534\t65534");
    // Stopped, it still ends when the spawner is told.
    fd::pidfd_send_signal(worker_pidfd.as_fd(), libc::SIGSTOP).unwrap();
    let (reply, _) = call(
        &chan,
        &WorkerRequest::End {
            id: 8,
            pid: worker_pid,
        },
    );
    assert_eq!(reply, WorkerReply::Ended { id: 8 });
    let mut poll = [nix::poll::PollFd::new(
        worker_pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    assert_eq!(
        nix::poll::poll(&mut poll, nix::poll::PollTimeout::from(5000u16)).unwrap(),
        1,
        "the stopped subspace worker was killed"
    );
    drop((sub, nested_sub));
    let (reply, _) = call(
        &chan,
        &WorkerRequest::End {
            id: 9,
            pid: nested_pid,
        },
    );
    assert_eq!(reply, WorkerReply::Ended { id: 9 });
    barrier(&chan);
    assert_eq!(fd_count(pid), fds_before);
}

/// Whether `chan` has something to read within `ms`.
fn readable_within(chan: &Channel, ms: u16) -> bool {
    use nix::poll::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(chan.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, ms).unwrap() > 0
}

#[test]
fn takes_no_private_role_by_argument_environment_or_message() {
    need_root();
    // By argument: private mode is another binary; this one refuses to run.
    let (_mine, theirs) = Channel::pair().unwrap();
    let out = launch::worker_command(Path::new(WORKER), theirs.into())
        .arg("--private")
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown argument \"--private\""), "{err}");
    // By environment: what private mode's client sets (or anything like
    // it) changes nothing; it reads none. It is the supervisor: it answers
    // supervisor requests only, from a network namespace of its own.
    let (mine, theirs) = Channel::pair().unwrap();
    let child = launch::worker_command(Path::new(WORKER), theirs.into())
        .env("SPACER_PRIVATE_WORKER", WORKER)
        .env("SPACER_WORKER", WORKER)
        .env("SPACER_ROLE", "private")
        .spawn()
        .unwrap();
    let sup = Supervisor { child, chan: mine };
    // A private client's first request: not a supervisor request, ignored.
    let rooms = WorkerRequest::Rooms {
        id: 1,
        spaces: Spaces::UTS.bits(),
        options: Default::default(),
        uid: 0,
        caller: false,
    };
    sup.chan.send_msg(&rooms, &[]).unwrap();
    assert!(
        !readable_within(&sup.chan, 300),
        "a supervisor answered rooms"
    );
    let pid = sup.child.id() as i32;
    let net = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/net")).unwrap();
    assert_ne!(net(pid), net(std::process::id() as i32));
    // By message: a worker kind the protocol does not have (a third one,
    // as a private worker would be) starts nothing.
    #[derive(serde::Serialize)]
    enum Kind {
        Rooms,
        #[allow(dead_code)]
        Subspaces,
        Private,
    }
    #[derive(serde::Serialize)]
    enum Request {
        Spawn { kind: Kind },
    }
    let real = internal::encode(&SupervisorRequest::Spawn {
        kind: WorkerKind::Rooms,
    });
    let ours = |kind| internal::encode(&Request::Spawn { kind });
    assert_eq!(
        ours(Kind::Rooms),
        real,
        "the mirror encodes as the protocol"
    );
    sup.chan.send(&ours(Kind::Private), &[]).unwrap();
    assert!(!readable_within(&sup.chan, 300), "spawned a third kind");
    // Still the supervisor; its room worker starts no subspace for its
    // caller (only the spawner does, always as the broker's requester).
    let (_, chan, _) = sup.spawn_worker();
    let subspace = WorkerRequest::Subspace {
        id: 7,
        spaces: Spaces::USER.bits(),
        uid: 0,
        gid: 0,
        parent: false,
        caller: false,
        maps: None,
    };
    let (reply, fds) = call(&chan, &subspace);
    assert!(fds.is_empty());
    match reply {
        WorkerReply::Invalid { id: 7, reason } => {
            assert!(
                reason.contains("started by the service's spawner"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}
