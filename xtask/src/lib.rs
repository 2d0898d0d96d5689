//! # xtask
//!
//! Build steps that cargo has no built-in for: manual pages and shell
//! completions generated from the clap definitions of `spacer` and
//! `spacer-broker`, the Debian package, and the line count of the worker
//! binaries against their budgets ([`lines`]).

#![forbid(unsafe_code)]

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap_complete::Shell;

pub mod lines;

/// The handwritten page for the policy file format.
const POLICY_PAGE: &str = include_str!("../../dist/man/spacer-policy.5");

/// Writes `spacer.1` (and `spacer-<subcommand>.1` for each subcommand and
/// nested subcommand that is not hidden: the pages the SUBCOMMANDS sections
/// name), `spacer-broker.8` and `spacer-policy.5` into `dir`. Every page
/// but the handwritten one has an EXIT STATUS section.
pub fn man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    let mut pages = Vec::new();
    command_pages(
        spacer_client::cli::command(),
        "spacer",
        spacer_client::cli::EXIT_STATUS,
        &mut pages,
    );
    let broker = spacer_broker::cli::command();
    pages.push((
        broker,
        "spacer-broker.8".to_owned(),
        spacer_broker::cli::EXIT_STATUS,
    ));
    for (cmd, file, exit_status) in pages {
        let section = file.rsplit('.').next().unwrap_or("1").to_owned();
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .section(section)
            .render(&mut buf)?;
        let page = with_exit_status(&String::from_utf8_lossy(&buf), exit_status);
        let path = dir.join(file);
        fs::write(&path, page)?;
        out.push(path);
    }
    let path = dir.join("spacer-policy.5");
    fs::write(&path, POLICY_PAGE)?;
    out.push(path);
    Ok(out)
}

type Page = (
    clap::Command,
    String,
    &'static [(&'static str, &'static str)],
);

/// The section 1 page of `cmd` as `name`, then those of its subcommands as
/// `name-<sub>`, depth first. No `help` subcommand: it has no page.
fn command_pages(
    cmd: clap::Command,
    name: &str,
    exit_status: &'static [(&'static str, &'static str)],
    pages: &mut Vec<Page>,
) {
    // clap names are 'static; this process is short-lived.
    let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
    let cmd = cmd.name(name).disable_help_subcommand(true);
    let subs: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    pages.push((cmd, format!("{name}.1"), exit_status));
    for sub in subs {
        let sub_name = format!("{name}-{}", sub.get_name());
        command_pages(sub, &sub_name, exit_status, pages);
    }
}

/// `page` with an EXIT STATUS section after OPTIONS and SUBCOMMANDS (before
/// clap_mangen's EXTRA, VERSION and AUTHORS sections).
fn with_exit_status(page: &str, exit_status: &[(&str, &str)]) -> String {
    let mut section = String::from(".SH \"EXIT STATUS\"\n");
    for (status, meaning) in exit_status {
        section.push_str(&format!(
            ".TP\n.B {}\n{}\n",
            roff_text(status),
            roff_text(meaning)
        ));
    }
    let at = ["\n.SH EXTRA\n", "\n.SH VERSION\n", "\n.SH AUTHORS\n"]
        .iter()
        .filter_map(|h| page.find(h))
        .min()
        .map_or(page.len(), |i| i + 1);
    let mut out = page.to_owned();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.insert_str(at.min(out.len()), &section);
    out
}

/// Plain text as one roff text line: backslashes and hyphens escaped, a
/// leading control character neutralised.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// Writes bash, zsh and fish completions for both commands into `dir`
/// (`bash/`, `zsh/`, `fish/`).
pub fn completions(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let sub = dir.join(shell.to_string());
        fs::create_dir_all(&sub)?;
        for (mut cmd, name) in [
            (spacer_client::cli::command(), "spacer"),
            (spacer_broker::cli::command(), "spacer-broker"),
        ] {
            let path = clap_complete::generate_to(shell, &mut cmd, name, &sub)?;
            out.push(path);
        }
    }
    Ok(out)
}

/// Where things go in the package.
pub const LAYOUT: &[(&str, &str)] = &[
    ("spacer-broker", "usr/sbin/spacer-broker"),
    ("spacer-worker", "usr/libexec/spacer/spacer-worker"),
    (
        "spacer-private-worker",
        "usr/libexec/spacer/spacer-private-worker",
    ),
    ("spacer", "usr/bin/spacer"),
];

/// Every path the package must contain (for its test).
pub const PACKAGE_PATHS: &[&str] = &[
    "usr/sbin/spacer-broker",
    "usr/libexec/spacer/spacer-worker",
    "usr/libexec/spacer/spacer-private-worker",
    "usr/bin/spacer",
    "usr/lib/systemd/system/spacer.socket",
    "usr/lib/systemd/system/spacer-broker.service",
    "usr/share/man/man1/spacer.1.gz",
    "usr/share/man/man1/spacer-run.1.gz",
    "usr/share/man/man8/spacer-broker.8.gz",
    "usr/share/man/man5/spacer-policy.5.gz",
    "usr/share/doc/spacer/policy.example.toml",
    "usr/share/doc/spacer/README.md",
    "usr/share/doc/spacer/copyright",
    "usr/share/bash-completion/completions/spacer",
    "usr/share/zsh/vendor-completions/_spacer",
    "usr/share/fish/vendor_completions.d/spacer.fish",
    "etc/spacer/",
];

fn run(cmd: &mut Command) -> io::Result<()> {
    let st = cmd.status()?;
    if st.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("{cmd:?} failed: {st}")))
    }
}

fn install(src: &Path, dst: &Path, mode: u32) -> io::Result<()> {
    if let Some(d) = dst.parent() {
        fs::create_dir_all(d)?;
    }
    fs::copy(src, dst)?;
    fs::set_permissions(dst, fs::Permissions::from_mode(mode))
}

/// Builds `spacer_<version>_<arch>.deb` in `out` from the binaries in
/// `bins` and the repository at `root`; returns its path.
pub fn deb(root: &Path, bins: &Path, out: &Path, version: &str) -> io::Result<PathBuf> {
    let stage = out.join("deb-root");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    for (bin, dst) in LAYOUT {
        install(&bins.join(bin), &stage.join(dst), 0o755)?;
    }
    for unit in ["spacer.socket", "spacer-broker.service"] {
        install(
            &root.join("dist").join(unit),
            &stage.join("usr/lib/systemd/system").join(unit),
            0o644,
        )?;
    }
    let man = out.join("man");
    for page in man_pages(&man)? {
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        let section = name.rsplit('.').next().unwrap_or("1").to_owned();
        let dst = stage.join(format!("usr/share/man/man{section}/{name}"));
        install(&page, &dst, 0o644)?;
        run(Command::new("gzip").args(["-9n", "-f"]).arg(&dst))?;
    }
    let comp = out.join("completions");
    completions(&comp)?;
    for (src, dst) in [
        (
            "bash/spacer.bash",
            "usr/share/bash-completion/completions/spacer",
        ),
        (
            "bash/spacer-broker.bash",
            "usr/share/bash-completion/completions/spacer-broker",
        ),
        ("zsh/_spacer", "usr/share/zsh/vendor-completions/_spacer"),
        (
            "zsh/_spacer-broker",
            "usr/share/zsh/vendor-completions/_spacer-broker",
        ),
        (
            "fish/spacer.fish",
            "usr/share/fish/vendor_completions.d/spacer.fish",
        ),
        (
            "fish/spacer-broker.fish",
            "usr/share/fish/vendor_completions.d/spacer-broker.fish",
        ),
    ] {
        install(&comp.join(src), &stage.join(dst), 0o644)?;
    }
    // Where the administrator puts the policy (the package ships none: the
    // broker uses its embedded default until one exists).
    let etc = stage.join("etc/spacer");
    fs::create_dir_all(&etc)?;
    fs::set_permissions(&etc, fs::Permissions::from_mode(0o755))?;
    let doc = stage.join("usr/share/doc/spacer");
    install(
        &root.join("dist/policy.example.toml"),
        &doc.join("policy.example.toml"),
        0o644,
    )?;
    install(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    fs::write(
        doc.join("copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: spacer\n\nFiles: *\nLicense: Apache-2.0\n",
    )?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    fs::write(
        debian.join("control"),
        format!(
            "Package: spacer\nVersion: {version}\nArchitecture: {arch}\nMaintainer: spacer maintainers <root@localhost>\n\
             Depends: libc6, adduser, procps\nSection: admin\nPriority: optional\n\
             Description: Linux namespaces for users who may not create them, under policy\n \
             An unprivileged broker checks an administrator's policy, audits every\n \
             decision, and has a small confined worker create the namespaces.\n"
        ),
    )?;
    let scripts = [
        (
            "postinst",
            "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n\
             \tif ! getent passwd spacer >/dev/null; then\n\
             \t\tadduser --system --group --no-create-home --home /nonexistent --quiet spacer\n\
             \tfi\n\
             \tif [ -d /run/systemd/system ]; then\n\
             \t\tsystemctl daemon-reload >/dev/null || true\n\
             \t\tsystemctl enable spacer.socket >/dev/null || true\n\
             \t\tsystemctl start spacer.socket >/dev/null || true\n\
             \tfi\nfi\n",
        ),
        (
            "prerm",
            "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then\n\
             \tsystemctl stop spacer-broker.service spacer.socket >/dev/null || true\n\
             \tif [ \"$1\" = remove ]; then systemctl disable spacer.socket >/dev/null || true; fi\nfi\n",
        ),
        (
            "postrm",
            "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null || true; fi\n",
        ),
    ];
    for (name, text) in scripts {
        let p = debian.join(name);
        fs::write(&p, text)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
    }
    let deb = out.join(format!("spacer_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group", "-Zgzip"])
        .arg(&stage)
        .arg(&deb))?;
    Ok(deb)
}
