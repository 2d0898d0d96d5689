//! `cargo xtask <step> [OUT]`:
//!
//! * `man [DIR]` — manual pages (default `target/dist/man`)
//! * `completions [DIR]` — bash, zsh and fish completions (default
//!   `target/dist/completions`)
//! * `deb` — release build, then `target/dist/spacer_<version>_<arch>.deb`
//! * `dist` — all of the above

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dist = target().join("dist");
    let out = |i: usize, d: &str| {
        args.get(i)
            .map(PathBuf::from)
            .unwrap_or_else(|| dist.join(d))
    };
    let result = match args.first().map(String::as_str) {
        Some("man") => xtask::man_pages(&out(1, "man")).map(|v| report(&v)),
        Some("completions") => xtask::completions(&out(1, "completions")).map(|v| report(&v)),
        Some("deb") => deb(&dist),
        Some("dist") => xtask::man_pages(&dist.join("man"))
            .and_then(|m| xtask::completions(&dist.join("completions")).map(|c| (m, c)))
            .and_then(|(m, c)| {
                report(&m);
                report(&c);
                deb(&dist)
            }),
        _ => {
            eprintln!("usage: cargo xtask man|completions [DIR] | deb | dist");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn report(paths: &[PathBuf]) {
    for p in paths {
        println!("{}", p.display());
    }
}

fn deb(dist: &Path) -> std::io::Result<()> {
    let st = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "spacer-broker",
            "-p",
            "spacer-worker",
            "-p",
            "spacer-private-worker",
            "-p",
            "spacer-client",
        ])
        .current_dir(root())
        .status()?;
    if !st.success() {
        return Err(std::io::Error::other("release build failed"));
    }
    let deb = xtask::deb(
        &root(),
        &target().join("release"),
        dist,
        env!("CARGO_PKG_VERSION"),
    )?;
    println!("{}", deb.display());
    Ok(())
}
