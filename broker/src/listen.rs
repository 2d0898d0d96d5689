//! The listening socket: created (replacing a stale one safely) or taken
//! from systemd (`LISTEN_FDS`); and readiness notification (`NOTIFY_SOCKET`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    bind, getsockname, getsockopt, listen, socket, sockopt, AddressFamily, Backlog, SockFlag,
    SockType, UnixAddr,
};
use spacer_proto::Channel;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// Another broker answers on the path.
    #[error("another broker is already serving {0}")]
    InUse(PathBuf),
    /// Something that is not a socket sits at the path.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// A socket call failed.
    #[error("{what} {path}")]
    Io {
        /// The step.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The fd systemd passed is not what the unit should give.
    #[error("the socket passed by systemd (LISTEN_FDS) is not a listening AF_UNIX SOCK_SEQPACKET socket bound to a file")]
    BadInherited,
}

/// The listening socket.
#[derive(Debug)]
pub struct Listener {
    /// The socket (non-blocking, close-on-exec).
    pub fd: OwnedFd,
    /// The path of a socket file this broker created (and removes on exit);
    /// `None` for one passed by systemd.
    pub created: Option<PathBuf>,
    /// The socket's directory, if this broker created it.
    pub created_dir: Option<PathBuf>,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ListenError + 'a {
    move |source| ListenError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The socket systemd passed, if this process is the one it was passed to.
/// The variables are removed so that nothing started later sees them.
pub fn inherited() -> Result<Option<Listener>, ListenError> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").ok();
    // Removed while main is still single-threaded (no runtime yet).
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if !for_us {
        return Ok(None);
    }
    if count.as_deref() != Some("1") {
        return Err(ListenError::BadInherited);
    }
    // A socket file, so that its permissions apply: never an abstract or
    // unnamed socket, which anyone in the network namespace could reach.
    let is_it = |fd: BorrowedFd<'_>| {
        matches!(getsockopt(&fd, sockopt::SockType), Ok(SockType::SeqPacket))
            && matches!(getsockopt(&fd, sockopt::AcceptConn), Ok(true))
            && getsockname::<UnixAddr>(fd.as_raw_fd()).is_ok_and(|a| a.path().is_some())
    };
    // SAFETY: LISTEN_PID and LISTEN_FDS=1 say fd 3 was passed to this
    // process; this runs once, before the runtime starts; `is_it` accepts
    // only a listening SOCK_SEQPACKET socket file, which nothing else in
    // the broker opens.
    #[allow(unsafe_code)]
    let fd = unsafe { crate::sys::adopt_listen_fd(is_it) };
    let fd = fd.ok_or(ListenError::BadInherited)?;
    Channel::from_fd(fd.try_clone().map_err(|_| ListenError::BadInherited)?)
        .and_then(|c| c.set_nonblocking(true))
        .map_err(|_| ListenError::BadInherited)?;
    Ok(Some(Listener {
        fd,
        created: None,
        created_dir: None,
    }))
}

/// Creates the socket file at `path`, mode 0666 (the policy decides who
/// may do what, not the file mode). A stale socket (nobody answers) is
/// replaced; a live one or a non-socket file is an error.
pub fn create(path: &Path) -> Result<Listener, ListenError> {
    let mut created_dir = None;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io_err("creating the directory of", path))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err("setting the mode of the directory of", path))?;
            created_dir = Some(dir.to_owned());
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match Channel::connect(path) {
            Ok(_) => return Err(ListenError::InUse(path.to_owned())),
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                std::fs::remove_file(path).map_err(io_err("removing the stale socket", path))?;
            }
            Err(e) => return Err(io_err("probing the existing socket", path)(e)),
        },
        Ok(_) => return Err(ListenError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspecting", path)(e)),
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| io_err("creating a socket for", path)(e.into()))?;
    let addr = UnixAddr::new(path).map_err(|e| io_err("naming", path)(e.into()))?;
    bind(fd.as_raw_fd(), &addr).map_err(|e| io_err("binding", path)(e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(io_err("setting the mode of", path))?;
    listen(&fd, Backlog::new(1024).expect("a valid backlog"))
        .map_err(|e| io_err("listening on", path)(e.into()))?;
    Ok(Listener {
        fd,
        created: Some(path.to_owned()),
        created_dir,
    })
}

/// Hands a directory this broker made for its socket to the broker user,
/// so that it can remove the socket when it stops. Never to `nobody`:
/// other services share that user and could replace the socket.
pub fn hand_dir_to(listener: &Listener, target: &crate::privs::Target) -> Result<(), ListenError> {
    let Some(dir) = &listener.created_dir else {
        return Ok(());
    };
    if target.name == "nobody" || target.uid == spacer_policy::overflow_uid() {
        return Ok(());
    }
    nix::unistd::chown(
        dir,
        Some(nix::unistd::Uid::from_raw(target.uid)),
        Some(nix::unistd::Gid::from_raw(target.gid)),
    )
    .map_err(|e| ListenError::Io {
        what: "handing the socket directory to the broker user:",
        path: dir.clone(),
        source: e.into(),
    })
}

/// A connected `NOTIFY_SOCKET`, opened before the privilege drop.
#[derive(Debug)]
pub struct Notifier {
    sock: Option<UnixDatagram>,
}

impl Notifier {
    /// Connects to `$NOTIFY_SOCKET` if set (path or `@abstract`).
    pub fn from_env() -> Notifier {
        let sock = std::env::var_os("NOTIFY_SOCKET").and_then(|target| {
            std::env::remove_var("NOTIFY_SOCKET");
            let target = target.to_string_lossy().into_owned();
            let addr = match target.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok()?,
                None => SocketAddr::from_pathname(&target).ok()?,
            };
            let s = UnixDatagram::unbound().ok()?;
            s.connect_addr(&addr).ok()?;
            Some(s)
        });
        Notifier { sock }
    }

    /// `RELOADING=1` with the monotonic timestamp systemd wants with it.
    pub fn reloading(&self) {
        let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
            .unwrap_or(0);
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    /// Sends a state line such as `READY=1` (nothing if not under systemd).
    pub fn notify(&self, state: &str) {
        if let Some(s) = &self.sock {
            let _ = s.send(state.as_bytes());
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
