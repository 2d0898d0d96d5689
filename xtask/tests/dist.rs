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
