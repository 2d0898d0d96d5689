//! The client library facing a broken or hostile service: too few or too
//! many fds, fds of the wrong kind, types it did not ask for. Every case is
//! an error, and every fd that arrived is closed. (Its own test binary with
//! one test: the fd count of this process is the measure.)

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use spacer_client::{Client, Error, NsType, Spaces};
use spacer_proto::wire::Response;
use spacer_proto::Channel;

fn ns(name: &str) -> OwnedFd {
    std::fs::File::open(format!("/proc/self/ns/{name}"))
        .unwrap()
        .into()
}

fn pipe() -> OwnedFd {
    std::io::pipe().unwrap().0.into()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A client connected to a one-shot service that reads one request and
/// answers `reply` with `fds`.
fn facing(reply: Vec<u8>, fds: Vec<OwnedFd>) -> (Client, std::thread::JoinHandle<()>) {
    let (service, mine) = Channel::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let _ = service.recv(&mut buf, 0).unwrap();
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        service.send(&reply, &borrowed).unwrap();
    });
    (Client::from_fd(mine.into()).unwrap(), t)
}

fn rooms(types: &[NsType]) -> Vec<u8> {
    Response::Rooms {
        types: types.to_vec(),
    }
    .encode()
}

#[test]
fn a_broken_service_gets_an_error_and_every_fd_it_sent_is_closed() {
    let base = open_fds();
    let net = || ns("net");
    type Case = (&'static str, Spaces, Vec<u8>, Vec<OwnedFd>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "too few fds",
            Spaces::NET,
            rooms(&[NsType::Net]),
            vec![],
            "fds",
        ),
        (
            "too many fds",
            Spaces::NET,
            rooms(&[NsType::Net]),
            vec![net(), net()],
            "fds",
        ),
        (
            "a pipe for a namespace",
            Spaces::NET,
            rooms(&[NsType::Net]),
            vec![pipe()],
            "not a",
        ),
        (
            "a uts namespace in the net slot",
            Spaces::NET,
            rooms(&[NsType::Net]),
            vec![ns("uts")],
            "not a",
        ),
        (
            "a type not asked for",
            Spaces::NET,
            rooms(&[NsType::Uts]),
            vec![ns("uts")],
            "asked",
        ),
        (
            "a type missing",
            Spaces::NET | Spaces::UTS,
            rooms(&[NsType::Net]),
            vec![net()],
            "asked",
        ),
        (
            "a subspace for rooms",
            Spaces::NET,
            Response::Subspace {
                user: true,
                pid: false,
            }
            .encode(),
            vec![pipe(), pipe(), ns("user")],
            "",
        ),
        (
            "fds with an error",
            Spaces::NET,
            Response::error(spacer_proto::wire::ErrorKind::Failed, "no").encode(),
            vec![net()],
            "",
        ),
    ];
    for (what, spaces, reply, fds, want) in cases {
        let (client, service) = facing(reply, fds);
        let got = client.rooms(spaces);
        service.join().unwrap();
        match got {
            Err(Error::Protocol(e)) => assert!(e.to_string().contains(want), "{what}: {e}"),
            other => panic!("{what}: {other:?}"),
        }
        drop(client);
    }
    // The fds made for the cases are gone with them; nothing that arrived
    // stayed open.
    assert_eq!(open_fds(), base);

    // A subspace reply whose conn and pidfd are pipes.
    let (client, service) = facing(
        Response::Subspace {
            user: true,
            pid: false,
        }
        .encode(),
        vec![pipe(), pipe(), ns("user")],
    );
    let got = client.subspace(Spaces::USER);
    service.join().unwrap();
    assert!(matches!(got, Err(Error::Protocol(_))), "{got:?}");
    drop(client);
    assert_eq!(open_fds(), base);
}
