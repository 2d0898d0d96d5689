//! The `spacer` command without a broker: policy tools, usage and
//! connection errors, exit codes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use spacer_policy::{FileCheck, Matcher, SystemResolver};

const SPACER: &str = env!("CARGO_BIN_EXE_spacer");

fn example_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/policy.example.toml")
}

/// `text` in a file of `dir` with `mode`, owned by whoever runs the tests
/// (root in CI, as the broker wants it).
fn policy_file(dir: &Path, text: &str, mode: u32) -> String {
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.display().to_string()
}

/// The example policy, installed as the README says (mode 0644).
fn example(dir: &Path) -> String {
    policy_file(
        dir,
        &std::fs::read_to_string(example_source()).unwrap(),
        0o644,
    )
}

fn spacer(args: &[&str]) -> Output {
    Command::new(SPACER).args(args).output().unwrap()
}

#[test]
fn policy_check_summarises_rules_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let out = spacer(&["policy", "check", &example(dir.path())]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("valid, 3 rule(s)"), "{text}");
    assert!(text.contains("rule 1 (\"root\") (line 15): uid 0 may create cgroup, ipc, mnt, net, time, uts, user, pid"), "{text}");
    assert!(!text.contains("can never match"), "{text}");
    // The broker's default caps apply where a rule sets none, and say so.
    assert!(
        text.contains("; max_subspaces 64 (broker default), max_connections 64 (broker default)\n"),
        "{text}"
    );
    assert!(
        text.contains("max_subspaces 32, max_connections 64 (broker default), max_rooms 64 (broker default)\n"),
        "{text}"
    );
    assert!(
        text.contains("grant user: a holder can create every other namespace type"),
        "{text}"
    );
    // A rule behind another for the same uid is named.
    let shadowed = policy_file(
        dir.path(),
        "[[rule]]\nuid = 0\nallow = [\"net\"]\n[[rule]]\nname = \"again\"\nuser = \"root\"\nallow = []\n",
        0o644,
    );
    let out = spacer(&["policy", "check", &shadowed]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "warning: rule 2 (\"again\") (user \"root\" (uid 0)) can never match: rule 1 (uid 0)"
        ),
        "{text}"
    );
}

/// Matchers are exact: a rule can never match when an earlier one names the
/// same uid (`uid` or `user`) or the same gid (`gid` or `group`).
fn dead_rules(pol: &spacer_policy::Policy) -> Vec<String> {
    let key = |m: &Matcher| match m.uid() {
        Some(u) => ("uid", u),
        None => ("gid", m.gid().expect("a matcher names a uid or a gid")),
    };
    let rules = pol.rules();
    (0..rules.len())
        .filter(|&j| {
            rules[..j]
                .iter()
                .any(|earlier| key(&earlier.matcher) == key(&rules[j].matcher))
        })
        .map(|j| format!("rule {} ({})", rules[j].index, rules[j].matcher))
        .collect()
}

#[test]
fn the_example_policy_has_no_dead_rule_and_grants_no_root_group() {
    let pol = spacer_policy::load_file(&example_source(), FileCheck::ContentOnly, &SystemResolver)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(pol.rules().len() >= 3, "{:?}", pol.rules());
    assert_eq!(dead_rules(&pol), Vec::<String>::new());
    assert!(pol.shadowed().is_empty());
    for r in pol.rules() {
        assert!(
            r.matcher.gid() != Some(0) || r.grant.allow.is_empty(),
            "rule {} grants gid 0",
            r.index
        );
    }
    assert!(pol.defaults().allow.is_empty(), "deny by default");
    // The check itself finds a dead rule.
    let dead = spacer_policy::parse(
        "dead.toml",
        "[[rule]]\ngid = 5\n[[rule]]\nuid = 5\n[[rule]]\ngroup = \"root\"\n[[rule]]\ngid = 0\n",
        &SystemResolver,
        65534,
    )
    .unwrap();
    assert_eq!(dead_rules(&dead), ["rule 4 (gid 0)"]);
}

#[test]
fn policy_check_refuses_what_the_broker_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example_source()).unwrap();
    let me = nix::unistd::geteuid().as_raw();
    let mut cases = vec![(0o666, "is writable by others (mode 0666)".to_owned())];
    if me == 0 {
        cases.push((0o664, "is writable by its group (mode 0664)".to_owned()));
    }
    for (mode, says) in cases {
        let file = policy_file(dir.path(), &text, mode);
        let out = spacer(&["policy", "check", &file]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{mode:o}: {err}");
        let says = if me == 0 {
            says
        } else {
            format!("is owned by uid {me}")
        };
        assert_eq!(
            err.trim(),
            format!(
                "spacer: policy file {file} {says}; it must be owned by root and writable by \
                 root only; spacer-broker refuses it"
            )
        );
        assert!(out.stdout.is_empty(), "no summary of a refused file");
    }
    if me == 0 {
        let file = policy_file(dir.path(), &text, 0o644);
        nix::unistd::chown(
            Path::new(&file),
            Some(nix::unistd::Uid::from_raw(4242)),
            None,
        )
        .unwrap();
        let out = spacer(&["policy", "check", &file]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("is owned by uid 4242"), "{err}");
        // explain still explains a draft, and says the broker would refuse it.
        let out = spacer(&["policy", "explain", &file, "--uid", "0", "--gid", "0"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains("warning: policy file") && err.contains("is owned by uid 4242"),
            "{err}"
        );
    }
}

#[test]
fn policy_check_fails_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = policy_file(
        dir.path(),
        "[[rule]]\nuid = 1\nallow = [\"net\", \"net\"]\n",
        0o644,
    );
    let out = spacer(&["policy", "check", &bad]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy.toml:3:17: net is listed twice"),
        "{err}"
    );
}

#[test]
fn policy_explain_names_the_deciding_rule_and_the_limits_that_apply() {
    let dir = tempfile::tempdir().unwrap();
    let example = example(dir.path());
    let explain = |args: &[&str]| {
        let out = spacer(&[&["policy", "explain", &example][..], args].concat());
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = explain(&["--uid", "1000", "--gid", "1000", "--gid", "100"]);
    assert!(
        text.contains("decided by rule 3 (\"build users\") (group \"users\" (gid 100), line 33)"),
        "{text}"
    );
    assert!(
        text.contains("may create: ipc, net, uts, user, pid"),
        "{text}"
    );
    assert!(
        text.contains(
            "limits: requests_per_minute 600, max_subspaces 8, max_depth 2, \
             max_connections 64, max_rooms 64\n"
        ),
        "{text}"
    );
    assert!(text.contains("room options: loopback, hostname"), "{text}");
    // Where the rule sets no limit, the broker's default caps apply, and
    // say so; a rule for root gets no room cap.
    let text = explain(&["--uid", "1001", "--gid", "1001"]);
    assert!(text.contains("decided by rule 2 (\"ci runner\")"), "{text}");
    assert!(
        text.contains(
            "limits: requests_per_minute 6000, max_subspaces 32, max_depth unlimited, \
             max_connections 64 (broker default), max_rooms 64 (broker default)\n"
        ),
        "{text}"
    );
    let text = explain(&["--uid", "0", "--gid", "0"]);
    assert!(
        text.contains(
            "limits: requests_per_minute unlimited, max_subspaces 64 (broker default), \
             max_depth unlimited, max_connections 64 (broker default), max_rooms unlimited\n"
        ),
        "{text}"
    );
    assert!(!text.contains("none"), "{text}");
    let text = explain(&["--uid", "1000", "--gid", "1000"]);
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
    let dir = tempfile::tempdir().unwrap();
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = Command::new(SPACER)
        .args(["policy", "check", &example(dir.path())])
        .stdout(std::process::Stdio::from(write))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}
