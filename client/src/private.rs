//! Private mode: a `spacer-private-worker` child of the caller, no broker.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use spacer_proto::{launch, Channel};

use crate::Error;

/// The environment variable that names the worker binary for private mode.
pub const WORKER_ENV: &str = "SPACER_PRIVATE_WORKER";

/// The private worker's file name. (Not `spacer-worker`: the broker's
/// root-run worker has no private role, and refuses to take one.)
pub const WORKER_NAME: &str = "spacer-private-worker";

/// Where an installed private worker lives (the Debian package puts it there).
pub const INSTALLED_WORKER: &str = "/usr/libexec/spacer/spacer-private-worker";

/// Finds `spacer-private-worker`, in this order: `$SPACER_PRIVATE_WORKER`
/// (taken as given); next to the running executable or one directory up (a
/// cargo test binary in `target/debug/deps` finds
/// `target/debug/spacer-private-worker`);
/// `/usr/libexec/spacer/spacer-private-worker`; `$PATH`; last, `debug` or
/// `release` of `$CARGO_TARGET_DIR`, then `target/debug` or
/// `target/release` of the current directory or any parent (doc tests, and
/// tests of crates in a workspace that builds the worker).
///
/// A found binary is used only if it, and every directory above it, is
/// owned by root or by this process's user and not writable by anyone else
/// (a world-writable directory must be sticky): a worker someone else could
/// have planted — `/tmp/target/debug/spacer-private-worker` — is skipped.
pub fn find_worker() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os(WORKER_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(Error::NoWorker { tried: vec![p] });
    }
    let exe = std::env::current_exe().ok();
    let cwd = std::env::current_dir().ok();
    let path = std::env::var_os("PATH");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .filter(|t| t.is_absolute());
    let mut tried = Vec::new();
    for c in candidates(
        exe.as_deref(),
        cwd.as_deref(),
        path.as_deref(),
        target.as_deref(),
    ) {
        if c.is_file() && trusted(&c) {
            return Ok(c);
        }
        tried.push(c);
    }
    Err(Error::NoWorker { tried })
}

/// Where to look, in order (see [`find_worker`]).
fn candidates(
    exe: Option<&Path>,
    cwd: Option<&Path>,
    path: Option<&std::ffi::OsStr>,
    target: Option<&Path>,
) -> Vec<PathBuf> {
    let name = WORKER_NAME;
    let mut out = Vec::new();
    if let Some(dir) = exe.and_then(Path::parent) {
        out.push(dir.join(name));
        if let Some(up) = dir.parent() {
            out.push(up.join(name));
        }
    }
    out.push(PathBuf::from(INSTALLED_WORKER));
    if let Some(path) = path {
        out.extend(std::env::split_paths(path).map(|d| d.join(name)));
    }
    if let Some(t) = target {
        out.push(t.join("debug").join(name));
        out.push(t.join("release").join(name));
    }
    if let Some(cwd) = cwd {
        for dir in cwd.ancestors() {
            out.push(dir.join("target/debug").join(name));
            out.push(dir.join("target/release").join(name));
        }
    }
    out
}

/// Whether `path` and every directory above it is owned by root or by us
/// and writable by nobody else (sticky world-writable directories allowed).
fn trusted(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    path.ancestors().all(|p| {
        if p.as_os_str().is_empty() {
            return true;
        }
        match std::fs::metadata(p) {
            Ok(m) => {
                let owner_ok = m.uid() == 0 || m.uid() == me;
                let sticky_dir = m.is_dir() && m.mode() & 0o1000 != 0;
                let write_ok = m.mode() & 0o022 == 0 || sticky_dir;
                owner_ok && write_ok
            }
            Err(_) => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn installed_and_path_come_before_the_working_directory() {
        let c = candidates(
            Some(Path::new("/x/target/debug/deps/t")),
            Some(Path::new("/home/a/p")),
            Some(std::ffi::OsStr::new("/usr/bin")),
            Some(Path::new("/t")),
        );
        let pos = |p: &str| c.iter().position(|x| x == Path::new(p)).unwrap();
        // $CARGO_TARGET_DIR after $PATH, before the working directory's.
        assert!(pos("/usr/bin/spacer-private-worker") < pos("/t/debug/spacer-private-worker"));
        assert!(
            pos("/t/release/spacer-private-worker")
                < pos("/home/a/p/target/debug/spacer-private-worker")
        );
        assert_eq!(pos("/x/target/debug/deps/spacer-private-worker"), 0);
        assert_eq!(pos("/x/target/debug/spacer-private-worker"), 1);
        assert!(pos(INSTALLED_WORKER) < pos("/home/a/p/target/debug/spacer-private-worker"));
        assert!(
            pos("/usr/bin/spacer-private-worker")
                < pos("/home/a/p/target/debug/spacer-private-worker")
        );
        assert!(
            pos("/home/a/p/target/debug/spacer-private-worker")
                < pos("/home/a/target/debug/spacer-private-worker")
        );
    }

    #[test]
    fn a_binary_others_could_have_planted_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("spacer-private-worker");
        std::fs::write(&bin, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(trusted(&bin));
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(!trusted(&bin), "world-writable file");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            !trusted(&bin),
            "world-writable directory without the sticky bit"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(trusted(&bin), "sticky like /tmp");
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(dir.path(), Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
            assert!(!trusted(&bin), "a directory someone else owns");
        }
    }
}

/// The running private worker, ended and reaped when its client is dropped.
#[derive(Debug)]
pub(crate) struct PrivateWorker {
    child: Child,
}

impl PrivateWorker {
    /// Starts `exe` (a private worker), in a process group of its own, with
    /// its end of a fresh socketpair as fd 3. Returns our end.
    pub(crate) fn start(exe: &Path) -> Result<(Channel, PrivateWorker), Error> {
        let (mine, theirs) = Channel::pair().map_err(Error::Io)?;
        let theirs: OwnedFd = theirs.into();
        // The command, with our copy of the worker's end, is dropped at the
        // end of this statement.
        let child = launch::worker_command(exe, theirs)
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Connect {
                path: exe.to_owned(),
                source,
            })?;
        Ok((mine, PrivateWorker { child }))
    }

    /// The worker's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PrivateWorker {
    fn drop(&mut self) {
        // The channel has closed (it is dropped first): the worker ends its
        // process group and exits. Reap it; do not wait forever.
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
