//! The `spacer` command without a broker: policy tools, usage and
//! connection errors, exit codes.

use std::process::Command;

const SPACER: &str = env!("CARGO_BIN_EXE_spacer");

fn example() -> String {
    format!("{}/../dist/policy.example.toml", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn policy_check_summarises_rules_and_warns() {
    let out = Command::new(SPACER)
        .args(["policy", "check", &example()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("valid, 3 rule(s)"), "{text}");
    assert!(text.contains("rule 1 (\"root\") (line 15): uid 0 may create cgroup, ipc, mnt, net, time, uts, user, pid"), "{text}");
    assert!(
        text.contains("warning: rule 2 (\"ci runners\") (user \"root\" (uid 0)) can never match"),
        "{text}"
    );
    assert!(
        text.contains("grant user: a holder can create every other namespace type"),
        "{text}"
    );
}

#[test]
fn policy_check_fails_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[rule]]\nuid = 1\nallow = [\"net\", \"net\"]\n").unwrap();
    let out = Command::new(SPACER)
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3:17: net is listed twice"), "{err}");
}

#[test]
fn policy_explain_names_the_deciding_rule() {
    let out = Command::new(SPACER)
        .args([
            "policy",
            "explain",
            &example(),
            "--uid",
            "1000",
            "--gid",
            "1000",
            "--gid",
            "0",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("decided by rule 3 (\"build users\") (gid 0, line 30)"),
        "{text}"
    );
    assert!(
        text.contains("may create: ipc, net, uts, user, pid"),
        "{text}"
    );
    assert!(text.contains("requests_per_minute 600"), "{text}");
    assert!(text.contains("room options: loopback, hostname"), "{text}");
    let out = Command::new(SPACER)
        .args([
            "policy",
            "explain",
            &example(),
            "--uid",
            "1000",
            "--gid",
            "1000",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("decided by defaults (no rule matches)"),
        "{text}"
    );
    assert!(text.contains("may create nothing"), "{text}");
}

#[test]
fn usage_errors_exit_2_and_connection_errors_exit_1() {
    let out = Command::new(SPACER)
        .args(["rooms", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    for (args, says) in [
        (&["run", "--", "id"][..], "no namespace asked for"),
        (&["run"][..], "no namespace asked for"),
        (&["rooms"][..], "no namespace type given"),
        (
            &["run", "--monotonic", "5", "-n", "true"][..],
            "--monotonic needs a new time namespace: add --time",
        ),
        (
            &["rooms", "--uts", "--loopback"][..],
            "--loopback needs a new net namespace: add --net",
        ),
    ] {
        let out = Command::new(SPACER)
            .args(args)
            .env("SPACER_SOCKET", "/nonexistent/spacer.sock")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // Short flags, and no `--` needed: parsed, then the missing broker says so.
    let out = Command::new(SPACER)
        .args([
            "run", "-U", "-p", "-n", "-m", "-u", "-i", "-C", "-T", "ls", "-l",
        ])
        .env("SPACER_SOCKET", "/nonexistent/spacer.sock")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot connect to /nonexistent/spacer.sock"),
        "{err}"
    );
    // An empty SPACER_SOCKET is the default socket.
    let out = Command::new(SPACER)
        .args(["rooms", "--net"])
        .env("SPACER_SOCKET", "")
        .env_remove("SPACER_FD")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(0) || err.contains("/run/spacer/spacer.sock"),
        "{err}"
    );
    let out = Command::new(SPACER)
        .args(["--socket", "/nonexistent/spacer.sock", "rooms", "--net"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "spacer: cannot connect to /nonexistent/spacer.sock: No such file or directory (os error 2)"
    );
}

#[test]
fn policy_check_into_a_closed_pipe_ends_quietly() {
    // `spacer policy check FILE | head -1`: the reader is gone before the
    // output is written.
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = Command::new(SPACER)
        .args(["policy", "check", &example()])
        .stdout(std::process::Stdio::from(write))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}
