//! The build steps produce what a host installs.

use std::process::Command;

mod common;
use common::{bins, root};

#[test]
fn man_pages_generate_and_format_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let pages = xtask::man_pages(dir.path()).unwrap();
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "spacer.1",
        "spacer-run.1",
        "spacer-broker.8",
        "spacer-policy.5",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    let broker = std::fs::read_to_string(dir.path().join("spacer-broker.8")).unwrap();
    assert!(broker.contains("\\-\\-policy") && broker.contains("\\-\\-socket"));
    // Every page a page refers to is generated (no `help` pseudo-command,
    // nested subcommands have pages of their own).
    let text = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    for page in &names {
        let body = text(page);
        for (i, _) in body.match_indices("spacer\\-") {
            let Some(end) = body[i..].find(')') else {
                continue;
            };
            let reference = &body[i..=i + end];
            let Some((name, section)) = reference.split_once('(') else {
                continue;
            };
            if name.contains(char::is_whitespace) || section.len() != 2 {
                continue;
            }
            let file = format!("{}.{}", name.replace("\\-", "-"), &section[..1]);
            assert!(
                names.contains(&file),
                "{page} refers to {reference}, which is not generated ({names:?})"
            );
        }
    }
    for want in ["spacer-policy-check.1", "spacer-policy-explain.1"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    assert!(
        !names
            .iter()
            .any(|n| n.contains("help") || n.contains("run-init")),
        "{names:?}"
    );
    // EXIT STATUS on every generated page, with the statuses of the command.
    for page in names.iter().filter(|n| *n != "spacer-policy.5") {
        let body = text(page);
        let at = body
            .find(".SH \"EXIT STATUS\"\n")
            .unwrap_or_else(|| panic!("{page} has no EXIT STATUS"));
        assert!(at > body.find(".SH OPTIONS").unwrap(), "{page}");
    }
    let spacer = text("spacer.1");
    for line in [
        ".TP\n.B 0\nSuccess.\n",
        ".TP\n.B 2\nA usage error: the command line is wrong.\n",
        ".TP\n.B 3\nDenied by the policy",
        "128+N when signal N ended it",
    ] {
        assert!(spacer.contains(line), "{line:?} in {spacer}");
    }
    assert!(spacer.contains(".TP\n.B 1\nAn error:"), "{spacer}");
    assert!(
        broker
            .contains(".SH \"EXIT STATUS\"\n.TP\n.B 0\nStopped by SIGTERM or SIGINT.\n.TP\n.B 1\n"),
        "{broker}"
    );
    assert!(broker.find("EXIT STATUS") < broker.find(".SH EXTRA"));
    for page in &pages {
        let out = Command::new("groff")
            .args(["-man", "-ww", "-z"])
            .arg(page)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn completions_generate_for_three_shells() {
    let dir = tempfile::tempdir().unwrap();
    let files = xtask::completions(dir.path()).unwrap();
    assert_eq!(files.len(), 6);
    let bash = std::fs::read_to_string(dir.path().join("bash/spacer.bash")).unwrap();
    assert!(bash.contains("rooms") && bash.contains("--socket"));
}

#[test]
fn deb_builds_and_holds_every_listed_path() {
    let dir = tempfile::tempdir().unwrap();
    let deb = xtask::deb(&root(), &bins(), dir.path(), "0.0.0~test").unwrap();
    let out = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    for path in xtask::PACKAGE_PATHS {
        assert!(
            listing.contains(&format!("./{path}")),
            "{path} missing:\n{listing}"
        );
    }
    assert!(
        listing.contains("-rwxr-xr-x root/root")
            && listing.contains("./usr/libexec/spacer/spacer-worker")
    );
    let info = Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("Package: spacer") && info.contains("Version: 0.0.0~test"),
        "{info}"
    );
    assert!(info.contains("postinst"), "{info}");
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    // Man pages where man(1) finds them (verify checks Documentation=).
    let gen = dir.path().join("gen");
    for page in xtask::man_pages(&gen).unwrap() {
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        let section = name.rsplit('.').next().unwrap().to_owned();
        let d = dir.path().join("man").join(format!("man{section}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&page, d.join(&name)).unwrap();
    }
    // The units as installed, with ExecStart pointing at the built binary.
    let units = dir.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::copy(
        root().join("dist/spacer.socket"),
        units.join("spacer.socket"),
    )
    .unwrap();
    let service = std::fs::read_to_string(root().join("dist/spacer-broker.service")).unwrap();
    let service = service.replace(
        "/usr/sbin/spacer-broker --worker /usr/libexec/spacer/spacer-worker",
        &bins().join("spacer-broker").display().to_string(),
    );
    std::fs::write(units.join("spacer-broker.service"), service).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("spacer.socket"))
        .arg(units.join("spacer-broker.service"))
        .env("MANPATH", dir.path().join("man"))
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
