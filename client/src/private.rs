//! Private mode: a `spacer-worker` child of the caller, no broker.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use spacer_proto::{launch, Channel};

use crate::Error;

/// The environment variable that names the worker binary for private mode.
pub const WORKER_ENV: &str = "SPACER_WORKER";

/// Where an installed worker lives (the Debian package puts it there).
pub const INSTALLED_WORKER: &str = "/usr/libexec/spacer/spacer-worker";

/// Finds `spacer-worker`, in this order: `$SPACER_WORKER`; next to the
/// running executable or one directory up (a cargo test binary in
/// `target/debug/deps` finds `target/debug/spacer-worker`); in
/// `target/debug` or `target/release` of the current directory or any parent
/// (doc tests, and tests of crates in a workspace that builds the worker);
/// `/usr/libexec/spacer/spacer-worker`; then `$PATH`.
pub fn find_worker() -> Result<PathBuf, Error> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os(WORKER_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p);
    }
    let name = "spacer-worker";
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join(name));
            if let Some(up) = dir.parent() {
                candidates.push(up.join(name));
            }
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            candidates.push(dir.join("target/debug").join(name));
            candidates.push(dir.join("target/release").join(name));
        }
    }
    candidates.push(PathBuf::from(INSTALLED_WORKER));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        tried.push(c);
    }
    Err(Error::NoWorker { tried })
}

/// The running private worker, ended and reaped when its client is dropped.
#[derive(Debug)]
pub(crate) struct PrivateWorker {
    child: Child,
}

impl PrivateWorker {
    /// Starts `exe` in private mode, in a process group of its own, with
    /// its end of a fresh socketpair as fd 3. Returns our end.
    pub(crate) fn start(exe: &Path) -> Result<(Channel, PrivateWorker), Error> {
        let (mine, theirs) = Channel::pair().map_err(Error::Io)?;
        let theirs: OwnedFd = theirs.into();
        let child = launch::worker_command(exe, &theirs)
            .arg("--private")
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Connect {
                path: exe.to_owned(),
                source,
            })?;
        drop(theirs);
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
