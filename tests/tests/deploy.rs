//! Running under systemd's protocols: socket activation, readiness and
//! reload notification, clean stop, journald fields.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use spacer_client::{Client, Spaces};
use spacer_tests::*;

fn write_policy(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("policy.toml");
    std::fs::write(&p, TEST_POLICY).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

fn sig(child: &std::process::Child, s: Signal) {
    kill(Pid::from_raw(child.id() as i32), s).unwrap();
}

/// Waits for the child to exit; its code and how long it took.
fn exit_of(child: &mut std::process::Child) -> (Option<i32>, Duration) {
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st.code(), t.elapsed());
        }
        assert!(t.elapsed() < Duration::from_secs(10), "did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn socket_activation_serves_and_leaves_the_socket_to_systemd() {
    need_root();
    let dir = open_dir();
    let sock = dir.path().join("activated.sock");
    let log = dir.path().join("broker.log");
    let mut child = KillOnDrop(
        Command::new("systemd-socket-activate")
            .arg("--seqpacket")
            .arg("-l")
            .arg(&sock)
            .arg(bin("spacer-broker"))
            .arg("--policy")
            .arg(write_policy(dir.path()))
            .arg("--log-format")
            .arg("json")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("systemd-socket-activate (Debian package systemd)"),
    );
    assert!(eventually(Duration::from_secs(5), || sock.exists()));
    // The first connection starts the broker on the passed socket.
    let rooms = Client::connect(&sock).unwrap().rooms(Spaces::UTS).unwrap();
    assert!(rooms.uts.is_some());
    let text = std::fs::read_to_string(&log).unwrap();
    let start: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "start")
        .expect("start event");
    assert_eq!(start["socket"], "(from systemd)");
    sig(&child, Signal::SIGTERM);
    let (code, took) = exit_of(&mut child);
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(1), "{took:?}");
    // Not the broker's socket file: it stays.
    assert!(sock.exists());
}

#[test]
fn readiness_reload_and_stop_are_notified() {
    need_root();
    let dir = open_dir();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut child = KillOnDrop(
        Command::new(bin("spacer-broker"))
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .arg("--policy")
            .arg(write_policy(dir.path()))
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = notify.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1");
    // Ready means serving.
    assert!(Client::connect(dir.path().join("s.sock"))
        .unwrap()
        .rooms(Spaces::NET)
        .is_ok());
    sig(&child, Signal::SIGHUP);
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next(), "READY=1");
    sig(&child, Signal::SIGTERM);
    assert_eq!(next(), "STOPPING=1");
    let (code, took) = exit_of(&mut child);
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(1), "{took:?}");
}

fn start_as_daemon(dir: &std::path::Path, sock: &std::path::Path) -> KillOnDrop {
    let child = KillOnDrop(
        Command::new(bin("spacer-broker"))
            .arg("--socket")
            .arg(sock)
            .arg("--policy")
            .arg(write_policy(dir))
            .args(["--user", "daemon", "--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("broker.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(eventually(Duration::from_secs(5), || Client::connect(sock).is_ok()));
    child
}

#[test]
fn sigterm_removes_the_socket_file_it_created_and_exits_0_within_a_second() {
    need_root();
    let dir = open_dir();
    // A directory the broker creates for its socket goes to its user.
    let sock = dir.path().join("run").join("spacer.sock");
    let mut child = start_as_daemon(dir.path(), &sock);
    assert!(Client::connect(&sock).unwrap().rooms(Spaces::UTS).is_ok());
    sig(&child, Signal::SIGTERM);
    let (code, took) = exit_of(&mut child);
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(!sock.exists(), "the socket file it created is removed");
    assert!(sock.parent().unwrap().exists(), "the directory stays");
}

#[test]
fn socket_in_a_root_owned_directory_is_left_for_the_next_start() {
    need_root();
    let dir = open_dir();
    let sock = dir.path().join("spacer.sock");
    let mut child = start_as_daemon(dir.path(), &sock);
    sig(&child, Signal::SIGTERM);
    assert_eq!(exit_of(&mut child).0, Some(0));
    assert!(sock.exists());
    let log = std::fs::read_to_string(dir.path().join("broker.log")).unwrap();
    assert!(log.contains("\"event\":\"socket_left\""), "{log}");
    // The next start replaces the stale socket.
    let mut again = start_as_daemon(dir.path(), &sock);
    assert!(Client::connect(&sock).unwrap().rooms(Spaces::UTS).is_ok());
    sig(&again, Signal::SIGTERM);
    assert_eq!(exit_of(&mut again).0, Some(0));
}

#[test]
fn a_live_broker_is_never_replaced() {
    let b = Broker::start(TEST_POLICY);
    let out = Command::new(bin("spacer-broker"))
        .arg("--socket")
        .arg(&b.socket)
        .arg("--policy")
        .arg(b.dir().join("policy.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another broker is already serving"));
    assert!(b.client().rooms(Spaces::UTS).is_ok());
}

#[test]
fn journal_gets_each_audit_field_as_a_field() {
    need_root();
    let dir = open_dir();
    let journal_path = dir.path().join("journal");
    let journal = UnixDatagram::bind(&journal_path).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let sock = dir.path().join("s.sock");
    let mut child = KillOnDrop(
        Command::new(bin("spacer-broker"))
            .arg("--socket")
            .arg(&sock)
            .arg("--policy")
            .arg(write_policy(dir.path()))
            .arg("--log-format")
            .arg("journal")
            .arg("--journal-socket")
            .arg(&journal_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(eventually(Duration::from_secs(5), || Client::connect(
        &sock
    )
    .is_ok()));
    let rooms = Client::connect(&sock).unwrap().rooms(Spaces::NET).unwrap();
    let mut buf = vec![0u8; 65536];
    let decision = loop {
        let n = journal.recv(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.contains("TARGET=spacer::audit\n") {
            break text;
        }
    };
    let fields: Vec<&str> = decision.lines().collect();
    for want in [
        "PRIORITY=6",
        "SYSLOG_IDENTIFIER=spacer-broker",
        "TARGET=spacer::audit",
        "UID=0",
        "DECISION=allow",
        "REQUEST=rooms",
        "RULE=1",
        "RULE_NAME=root",
    ] {
        assert!(fields.contains(&want), "{want} missing in {fields:?}");
    }
    let ino =
        spacer_proto::fd::namespace_inode(std::os::fd::AsFd::as_fd(rooms.net.as_ref().unwrap()))
            .unwrap();
    assert!(
        fields.contains(&format!("NAMESPACES={{\"net\":{ino}}}").as_str()),
        "{fields:?}"
    );
    // One line that says who got what (`journalctl -u`, `systemctl status`).
    let pid = std::process::id();
    assert!(
        fields.contains(
            &format!(
                "MESSAGE=uid 0 (pid {pid}) rooms net: allow by rule 1 (\"root\"): net:[{ino}]"
            )
            .as_str()
        ),
        "{fields:?}"
    );
    sig(&child, Signal::SIGTERM);
    assert_eq!(exit_of(&mut child).0, Some(0));
}

#[test]
fn an_abstract_socket_from_systemd_is_refused() {
    // Abstract sockets have no file, so no permissions: anyone in the
    // network namespace could reach one. The broker refuses to serve on it.
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    need_root();
    let dir = open_dir();
    let name = format!("spacer-test-{}", std::process::id());
    let log = dir.path().join("broker.log");
    let mut child = KillOnDrop(
        Command::new("systemd-socket-activate")
            .arg("--seqpacket")
            .arg("-l")
            .arg(format!("@{name}"))
            .arg(bin("spacer-broker"))
            .arg("--policy")
            .arg(write_policy(dir.path()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("systemd-socket-activate (Debian package systemd)"),
    );
    // The first connection starts the broker on the passed socket.
    let addr = UnixAddr::new_abstract(name.as_bytes()).unwrap();
    let connected = eventually(Duration::from_secs(5), || {
        let s = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        use std::os::fd::AsRawFd;
        connect(s.as_raw_fd(), &addr).is_ok()
    });
    assert!(connected, "{}", std::fs::read_to_string(&log).unwrap());
    let (code, _) = exit_of(&mut child);
    assert_ne!(code, Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("bound to a file"), "{text}");
}

#[test]
fn a_file_at_the_socket_path_is_never_replaced() {
    need_root();
    let dir = open_dir();
    let path = dir.path().join("spacer.sock");
    std::fs::write(&path, "precious").unwrap();
    let out = Command::new(bin("spacer-broker"))
        .arg("--socket")
        .arg(&path)
        .arg("--policy")
        .arg(write_policy(dir.path()))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a socket; refusing to replace it"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}
