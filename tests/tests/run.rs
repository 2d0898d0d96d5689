//! `spacer run` owns its command, as `unshare --fork --kill-child` does:
//! signals are passed on, the exit status is the command's (126/127 as a
//! shell says them, 128+n for a signal), and the command never outlives
//! `spacer`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use spacer_tests::*;

fn spacer_run(b: &Broker, args: &[&str]) -> Child {
    spawn_retrying(
        Command::new(b.copy_bin("spacer"))
            .arg("run")
            .args(args)
            .env("SPACER_SOCKET", &b.socket)
            .current_dir(b.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// The command started by `spacer` (its one child), once it runs.
fn command_of(spacer: &Child) -> i32 {
    let mut kids = Vec::new();
    let found = eventually(Duration::from_secs(5), || {
        kids = children(spacer.id() as i32);
        kids.len() == 1 && status(kids[0], "Name") != "spacer"
    });
    assert!(found, "spacer started no command: {kids:?}");
    kids[0]
}

fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn gone(pid: i32) -> bool {
    eventually(Duration::from_secs(5), || {
        std::fs::metadata(format!("/proc/{pid}")).is_err() || status(pid, "State").starts_with('Z')
    })
}

#[test]
fn a_signal_to_spacer_run_reaches_its_command_and_nothing_is_left() {
    let b = Broker::start(TEST_POLICY);
    let base = b.fd_counts();
    for (sig, code) in [
        (Signal::SIGTERM, 143),
        (Signal::SIGINT, 130),
        (Signal::SIGHUP, 129),
    ] {
        // PID 1 of its namespace: sleep ignores the signal (no handler), so
        // spacer ends it after a short grace.
        let mut spacer = spacer_run(&b, &["--pid", "--", "sleep", "60"]);
        let cmd = command_of(&spacer);
        kill(Pid::from_raw(spacer.id() as i32), sig).unwrap();
        let st = exit_within(&mut spacer, Duration::from_secs(5)).expect("spacer ended");
        assert_eq!(st.code(), Some(code), "{sig}");
        assert!(gone(cmd), "the command outlived spacer ({sig})");
    }
    b.assert_fds_back_to(&base);
}

#[test]
fn a_command_that_handles_the_signal_gives_its_own_status() {
    let b = Broker::start(TEST_POLICY);
    let base = b.fd_counts();
    let mut spacer = spacer_run(
        &b,
        &[
            "--pid",
            "--",
            "sh",
            "-c",
            "trap 'exit 7' INT; sleep 60 & wait",
        ],
    );
    let cmd = command_of(&spacer);
    // Until the shell has its trap, an INT would end it with 130: wait
    // until its child runs.
    assert!(eventually(Duration::from_secs(5), || !children(cmd).is_empty()));
    kill(Pid::from_raw(spacer.id() as i32), Signal::SIGINT).unwrap();
    let st = exit_within(&mut spacer, Duration::from_secs(5)).expect("spacer ended");
    assert_eq!(st.code(), Some(7));
    b.assert_fds_back_to(&base);
}

#[test]
fn spacer_killed_outright_takes_its_command_with_it() {
    let b = Broker::start(TEST_POLICY);
    let base = b.fd_counts();
    let mut spacer = spacer_run(&b, &["--pid", "--", "sleep", "60"]);
    let cmd = command_of(&spacer);
    spacer.kill().unwrap();
    spacer.wait().unwrap();
    assert!(gone(cmd), "the command outlived spacer");
    b.assert_fds_back_to(&base);
}

#[test]
fn a_missing_or_unexecutable_command_exits_127_or_126() {
    let b = Broker::start(TEST_POLICY);
    let base = b.fd_counts();
    let text = b.dir().join("not-a-program");
    std::fs::write(&text, "text\n").unwrap();
    let text = text.to_str().unwrap();
    for (args, code) in [
        (&["--pid", "--", "/nonexistent/cmd"][..], 127),
        (&["--uts", "--", "/nonexistent/cmd"][..], 127),
        (&["--pid", "--", text][..], 126),
        (&["--uts", "--", text][..], 126),
    ] {
        let mut spacer = spacer_run(&b, args);
        let st = exit_within(&mut spacer, Duration::from_secs(10)).expect("spacer ended");
        assert_eq!(st.code(), Some(code), "{args:?}");
    }
    b.assert_fds_back_to(&base);
}

#[test]
fn with_pid_and_mnt_proc_shows_only_the_new_namespace() {
    let b = Broker::start(test_policy_with_mnt().as_str());
    let base = b.fd_counts();
    for (uid, args, remounted) in [
        (0, &["run", "--pid", "--mnt", "--"][..], true),
        (TENANT, &["run", "--user", "--pid", "--mnt", "--"][..], true),
        // Without --mnt, /proc stays the caller's: not remounted.
        (TENANT, &["run", "--user", "--pid", "--"][..], false),
    ] {
        let mut args = args.to_vec();
        args.extend_from_slice(&[
            "sh",
            "-c",
            "readlink /proc/self; ls /proc | grep -c '^[0-9]'",
        ]);
        let out = b.spacer_as(uid, uid, &args);
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {err}");
        let lines: Vec<u32> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
        // sh is PID 1; readlink and ls are its children.
        if remounted {
            assert!(lines[0] <= 3 && lines[1] <= 3, "{args:?}: {text}");
        } else {
            assert!(lines[0] > 3 && lines[1] > 3, "{args:?}: {text}");
        }
    }
    b.assert_fds_back_to(&base);
}

#[test]
fn an_unprivileged_run_without_user_is_told_before_a_grant_is_spent() {
    let b = Broker::start(TEST_POLICY);
    let base = b.fd_counts();
    let out = b.spacer_as(TENANT, TENANT, &["run", "--net", "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("add --user"), "{err}");
    assert!(b.decisions().is_empty(), "{:?}", b.decisions());
    // With --user it works, `--` or not.
    let out = b.spacer_as(TENANT, TENANT, &["run", "-U", "-n", "true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.assert_fds_back_to(&base);
}

#[test]
fn with_init_orphans_are_reaped_and_the_status_passed_on() {
    let b = Broker::start(TEST_POLICY);
    let base = b.fd_counts();
    // Orphans (the inner shell's background child) end up with PID 1, which
    // with --init is not the command (PID 2, which cannot reap them): the
    // init must.
    let script = "(sh -c 'exit 0' &); sleep 0.5; \
                  echo pid=$$; grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l; exit 5";
    let zombies = |init: bool| {
        let mut args = vec!["run", "--pid", "--mnt"];
        if init {
            args.push("--init");
        }
        args.extend_from_slice(&["--", "sh", "-c", script]);
        let out = b.spacer_as(0, 0, &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(5), "{text}");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        (lines[0].to_owned(), lines[1].parse::<u32>().unwrap())
    };
    assert_eq!(zombies(true), ("pid=2".to_owned(), 0));
    assert_eq!(zombies(false).0, "pid=1");
    // Signals reach the command through the init.
    let mut spacer = spacer_run(
        &b,
        &[
            "--pid",
            "--init",
            "--",
            "sh",
            "-c",
            "trap 'exit 9' TERM; sleep 60 & wait",
        ],
    );
    // spacer → init (spacer run-init) → sh → sleep: the trap is set.
    assert!(eventually(Duration::from_secs(5), || children(
        spacer.id() as i32
    )
    .first()
    .and_then(|&init| children(init).first().copied())
    .is_some_and(|sh| !children(sh).is_empty())));
    kill(Pid::from_raw(spacer.id() as i32), Signal::SIGTERM).unwrap();
    let st = exit_within(&mut spacer, Duration::from_secs(5)).expect("spacer ended");
    assert_eq!(st.code(), Some(9));
    b.assert_fds_back_to(&base);
}
