//! Namespaces are made from the caller's own: a mount room copies the
//! requesting process's mount namespace (a caller confined to its own view
//! never gets the host's tree back), a UTS room its names, directly and
//! through a subspace.

use std::path::Path;
use std::process::Command;

use spacer_tests::*;

/// A tmpfs mounted on the host (in the test's own mount namespace) for the
/// life of the value.
struct HostMount(std::path::PathBuf);

impl HostMount {
    fn new(dir: &Path) -> HostMount {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "hostonly"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::write(dir.join("secret"), "host").unwrap();
        HostMount(dir.to_owned())
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Runs `script` with `sh` in a mount namespace of its own (private
/// propagation), as root, with `$SPACER` and `$SPACER_SOCKET` set.
fn in_own_mount_ns(b: &Broker, script: &str) -> (bool, String, String) {
    let out = output_retrying(
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
            ])
            .env("SPACER", b.copy_bin("spacer"))
            .env("SPACER_SOCKET", &b.socket)
            .current_dir(b.dir()),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_mount_room_is_a_copy_of_the_callers_view_not_the_hosts() {
    let b = Broker::start(TEST_POLICY);
    let base = b.fd_counts();
    let host_only = b.dir().join("hostonly");
    let _mount = HostMount::new(&host_only);
    let mine = b.dir().join("mine");
    // The caller hides the host's mount and mounts its own, then works in it.
    let script = format!(
        "umount {h} && mkdir -p {m} && mount -t tmpfs caller {m} && touch {m}/file && cd {m} && \
         \"$SPACER\" run --mnt -- sh -c 'pwd; ls {m}; ls {h}; echo end'",
        h = host_only.display(),
        m = mine.display()
    );
    let (ok, out, err) = in_own_mount_ns(&b, &script);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let want = mine.display().to_string();
    assert_eq!(lines, [want.as_str(), "file", "end"], "{err}");
    // The host still has its mount and nothing of the caller's.
    assert!(host_only.join("secret").exists());
    assert!(!mine.join("file").exists());
    b.assert_fds_back_to(&base);
}

#[test]
fn a_uts_room_copies_the_callers_names() {
    let b = Broker::start(TEST_POLICY);
    let base = b.fd_counts();
    let host = nix::unistd::gethostname().unwrap();
    let out = output_retrying(
        Command::new("unshare")
            .args(["--uts", "--", "sh", "-c"])
            .arg("hostname callerbox && \"$SPACER\" run --uts -- hostname")
            .env("SPACER", b.copy_bin("spacer"))
            .env("SPACER_SOCKET", &b.socket)
            .current_dir(b.dir()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "callerbox");
    assert_eq!(nix::unistd::gethostname().unwrap(), host);
    b.assert_fds_back_to(&base);
}

#[test]
fn a_tenant_in_a_container_view_keeps_it_through_a_subspace() {
    // A tenant put in a mount namespace of its own (as a container runtime
    // would) asks for a user subspace and a mount room inside it: it sees
    // its own tree, not the host's.
    let b = Broker::start(test_policy_with_mnt().as_str());
    let base = b.fd_counts();
    let host_only = b.dir().join("hostonly");
    let _mount = HostMount::new(&host_only);
    let mine = b.dir().join("mine");
    let script = format!(
        "umount {h} && mkdir -p {m} && mount -t tmpfs caller {m} && touch {m}/file && \
         exec setpriv --reuid {TENANT} --regid {TENANT} --clear-groups \
         \"$SPACER\" run --user --mnt -- sh -c 'ls {m}; ls {h}; echo end'",
        h = host_only.display(),
        m = mine.display()
    );
    let (ok, out, err) = in_own_mount_ns(&b, &script);
    assert!(ok, "{err}\n{}", b.log_text());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["file", "end"], "{err}");
    b.assert_fds_back_to(&base);
}

#[test]
fn a_tenant_in_a_pid_namespace_gets_a_pid_subspace_below_its_own() {
    // A tenant inside a PID namespace of its own (`unshare -pf
    // --mount-proc`, as a container would put it) asks for a user+PID
    // subspace: its command is PID 1 there, and visible in the tenant's
    // PID namespace (so the new one is below it), where no process of the
    // service stays.
    let b = Broker::start(TEST_POLICY);
    let base = b.fd_counts();
    let inner = "echo pid=$$; readlink /proc/self >/dev/null && echo seen-from-caller; \
                 cat /proc/[0-9]*/comm | grep -c spacer-subspace";
    let out = output_retrying(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--", "setpriv"])
            .args([
                "--reuid",
                &TENANT.to_string(),
                "--regid",
                &TENANT.to_string(),
            ])
            .args(["--clear-groups", "--"])
            .arg(b.copy_bin("spacer"))
            .args(["run", "--user", "--pid", "--", "sh", "-c", inner])
            .env("SPACER_SOCKET", &b.socket)
            .current_dir(b.dir()),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        ["pid=1", "seen-from-caller", "0"],
        "{err}\n{}",
        b.log_text()
    );
    b.assert_fds_back_to(&base);
}

#[test]
fn a_nested_subspace_below_a_pid_subspace_leaves_its_pid_1_alone() {
    // The tenant's first process in its PID subspace is PID 1; a nested
    // user+PID subspace asked from inside gets a namespace below that one,
    // and PID 1 carries on after the nested conn has closed.
    let b = Broker::start(&format!(
        "[[rule]]\nuid = {TENANT}\nallow = [\"user\", \"pid\"]\nmax_depth = 2\n"
    ));
    let base = b.fd_counts();
    let spacer = b.copy_bin("spacer");
    let s = spacer.display();
    let out = b.spacer_as(
        TENANT,
        TENANT,
        &[
            "run",
            "--user",
            "--pid",
            "--",
            "sh",
            "-c",
            &format!("echo outer=$$; {s} run --user --pid -- sh -c 'echo inner=$$'; echo after=$$"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", b.log_text());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, ["outer=1", "inner=1", "after=1"], "{err}");
    b.assert_fds_back_to(&base);
}
