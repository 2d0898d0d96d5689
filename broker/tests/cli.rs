//! The broker's command line, without starting a service.

use std::process::Command;

const BROKER: &str = env!("CARGO_BIN_EXE_spacer-broker");

#[test]
fn help_names_every_option_of_the_design() {
    let out = Command::new(BROKER).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in ["--socket", "--policy", "--user", "--log-format", "--worker"] {
        assert!(help.contains(opt), "{opt} missing from --help");
    }
}

#[test]
fn missing_policy_file_is_a_clear_error() {
    let out = Command::new(BROKER)
        .args([
            "--policy",
            "/nonexistent/policy.toml",
            "--socket",
            "/nonexistent/s.sock",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("cannot read policy file /nonexistent/policy.toml")
            || log.contains("must be started as root"),
        "{log}"
    );
    // One JSON object per line, even for a fatal error.
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["event"], "fatal");
    }
}

#[test]
fn bad_log_format_is_a_usage_error() {
    let out = Command::new(BROKER)
        .args(["--log-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
