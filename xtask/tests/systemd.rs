//! The README's deployment section, walked under a real systemd: a minimal
//! Debian made with `debootstrap` (from the distribution's archive, once
//! per target directory; every run boots a fresh copy of it) and booted
//! with `systemd-nspawn`, with the package built from this workspace's
//! binaries. Commands go in with `nsenter`. Needs root, `debootstrap`,
//! `systemd-nspawn` (package systemd-container) and `nsenter`, which
//! `.ci/run` installs, and the Debian archive.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{bins, root};

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// A minimal Debian with systemd, made once per target directory (a stamp
/// file with the debootstrap arguments marks it complete) and never booted
/// itself.
fn base() -> PathBuf {
    let base = bins().parent().unwrap().join("systemd-test-root");
    let stamp = base.with_extension("done");
    let mirror = std::env::var("SPACER_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let args = [
        "--variant=minbase",
        "--include=systemd,systemd-sysv,dbus,adduser,procps",
        "bookworm",
    ];
    let key = format!("{args:?} {mirror}");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == key) {
        return base;
    }
    let _ = std::fs::remove_file(&stamp);
    let _ = std::fs::remove_dir_all(&base);
    run(Command::new("debootstrap")
        .args(args)
        .arg(&base)
        .arg(mirror)
        .stdout(Stdio::null()));
    std::fs::write(&stamp, key).unwrap();
    base
}

/// A booted copy of the base; shut down and removed on drop.
struct Container {
    dir: tempfile::TempDir,
    nspawn: Child,
    leader: u32,
}

impl Container {
    fn boot() -> Container {
        let dir = tempfile::Builder::new()
            .prefix("spacer-systemd")
            .tempdir()
            .unwrap();
        let rootfs = dir.path().join("root");
        run(Command::new("cp").arg("-a").arg(base()).arg(&rootfs));
        let nspawn = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(&rootfs)
            .args([
                "-b",
                "--private-network",
                "--register=no",
                "--keep-unit",
                "--console=passive",
                "--quiet",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemd-nspawn (package systemd-container)");
        let mut c = Container {
            dir,
            leader: 0,
            nspawn,
        };
        let pid = c.nspawn.id();
        assert!(
            eventually(Duration::from_secs(30), || {
                c.leader = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
                c.leader != 0
            }),
            "the container did not start"
        );
        let booted = eventually(Duration::from_secs(90), || {
            let out = c.sh("systemctl is-system-running");
            let state = String::from_utf8_lossy(&out.stdout);
            matches!(state.trim(), "running" | "degraded")
        });
        assert!(booted, "systemd did not finish booting");
        c
    }

    /// Runs a shell command inside (as root, in every namespace of the
    /// container).
    fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .args(["-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--"])
            .args(["/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Like [`Container::sh`], expecting success; returns stdout.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The broker's pid, once systemd has one.
    fn broker_pid(&self) -> u32 {
        self.ok("systemctl show -p MainPID --value spacer-broker")
            .parse()
            .unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM asks nspawn to shut the container down; then for sure.
        let _ = Command::new("kill")
            .arg(self.nspawn.id().to_string())
            .status();
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

const NOBODY: &str = "setpriv --reuid nobody --regid nogroup --clear-groups";

#[test]
fn the_readme_deployment_works_under_a_real_systemd() {
    assert!(
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n")),
        "needs root (CI runs as root)"
    );
    let started = Instant::now();
    let out = tempfile::tempdir().unwrap();
    let deb = xtask::deb(&root(), &bins(), out.path(), "0.0.0~test").unwrap();
    let c = Container::boot();
    eprintln!("booted in {:?}", started.elapsed());
    std::fs::copy(&deb, c.rootfs().join("root/spacer.deb")).unwrap();

    // dpkg -i: the user, the socket enabled and listening, nothing running.
    c.ok("dpkg -i /root/spacer.deb >/dev/null");
    c.ok("getent passwd spacer");
    assert_eq!(c.ok("systemctl is-active spacer.socket"), "active");
    assert_eq!(c.ok("stat -c %a /run/spacer/spacer.sock"), "666");
    assert_eq!(
        String::from_utf8_lossy(&c.sh("systemctl is-active spacer-broker").stdout).trim(),
        "inactive"
    );
    // The README's policy step works as written (the package made /etc/spacer).
    c.ok("install -m 0644 -o root -g root /usr/share/doc/spacer/policy.example.toml /etc/spacer/policy.toml");
    c.ok("spacer policy check /etc/spacer/policy.toml | head -1");

    // The first connection, from an unprivileged user, starts the broker;
    // it is denied by policy (exit 3) and the journal has the record.
    let denied = c.sh(&format!("{NOBODY} spacer rooms --net"));
    assert_eq!(denied.status.code(), Some(3), "{denied:?}");
    assert_eq!(c.ok("systemctl is-active spacer-broker"), "active");
    let pid = c.broker_pid();
    let status = c.ok(&format!("cat /proc/{pid}/status"));
    let spacer_uid = c.ok("id -u spacer");
    assert!(
        status.contains(&format!(
            "Uid:\t{spacer_uid}\t{spacer_uid}\t{spacer_uid}\t{spacer_uid}"
        )),
        "{status}"
    );
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            status.contains(&format!("{set}:\t0000000000000000")),
            "{status}"
        );
    }
    let found = eventually(Duration::from_secs(10), || {
        let j = c.sh("journalctl -u spacer-broker DECISION=deny -o cat");
        String::from_utf8_lossy(&j.stdout).contains("uid 65534")
    });
    assert!(
        found,
        "{:?}",
        c.sh("journalctl -u spacer-broker --no-pager")
    );

    // Reload with a good policy: applied.
    std::fs::write(
        c.rootfs().join("etc/spacer/policy.toml"),
        "[[rule]]\nuser = \"nobody\"\nallow = [\"uts\"]\n",
    )
    .unwrap();
    c.ok("systemctl reload spacer-broker");
    let uts = c.sh(&format!("{NOBODY} spacer rooms --uts"));
    assert!(uts.status.success(), "{uts:?}");
    // Reload with a broken one: the old policy stays, the error is logged.
    std::fs::write(
        c.rootfs().join("etc/spacer/policy.toml"),
        "[[rule]]\nuser = \"nobody\"\nallow = [\"uts\", \"bogus\"]\n",
    )
    .unwrap();
    c.ok("systemctl reload spacer-broker");
    let uts = c.sh(&format!("{NOBODY} spacer rooms --uts"));
    assert!(uts.status.success(), "{uts:?}");
    assert!(eventually(Duration::from_secs(10), || {
        let j = c.sh("journalctl -u spacer-broker EVENT=policy_reload_failed -o cat");
        String::from_utf8_lossy(&j.stdout).contains("policy reload failed")
    }));
    assert_eq!(pid, c.broker_pid(), "reloaded in place");
    // (A broker started on a broken file refuses to start: put a good one
    // back before the restarts below.)
    std::fs::write(
        c.rootfs().join("etc/spacer/policy.toml"),
        "[[rule]]\nuser = \"nobody\"\nallow = [\"uts\"]\n",
    )
    .unwrap();

    // Stopped, the next connection starts it again.
    c.ok("systemctl stop spacer-broker");
    let uts = c.sh(&format!("{NOBODY} spacer rooms --uts"));
    assert!(uts.status.success(), "{uts:?}");
    let pid = c.broker_pid();

    // The supervisor killed: the broker exits and systemd restarts it.
    let sup = c.ok(&format!("cat /proc/{pid}/task/{pid}/children"));
    let sup = sup.split_whitespace().next().expect("a supervisor");
    c.ok(&format!("kill -9 {sup}"));
    let restarted = eventually(Duration::from_secs(20), || {
        let now = c.sh("systemctl show -p MainPID --value spacer-broker");
        let now: u32 = String::from_utf8_lossy(&now.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        now != 0 && now != pid
    });
    assert!(
        restarted,
        "{:?}",
        c.sh("systemctl status spacer-broker --no-pager")
    );
    assert!(eventually(Duration::from_secs(10), || c
        .sh(&format!("{NOBODY} spacer rooms --uts"))
        .status
        .success()));
    eprintln!("walked in {:?}", started.elapsed());
}
