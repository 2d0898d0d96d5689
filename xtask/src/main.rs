//! `cargo xtask <step> [OUT]`:
//!
//! * `man [DIR]` — manual pages (default `target/dist/man`)
//! * `completions [DIR]` — bash, zsh and fish completions (default
//!   `target/dist/completions`)
//! * `deb` — release build, then `target/dist/spacer_<version>_<arch>.deb`
//! * `dist` — all of the above
//! * `lines` — the lines of ours in each worker binary, against their
//!   budgets (`xtask::lines`); fails past a budget

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
        Some("lines") => lines(),
        Some("dist") => xtask::man_pages(&dist.join("man"))
            .and_then(|m| xtask::completions(&dist.join("completions")).map(|c| (m, c)))
            .and_then(|(m, c)| {
                report(&m);
                report(&c);
                deb(&dist)
            }),
        _ => {
            eprintln!("usage: cargo xtask man|completions [DIR] | deb | dist | lines");
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

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Builds each budgeted binary on its own and counts what went into it.
fn lines() -> std::io::Result<()> {
    let mut over = Vec::new();
    for budget in xtask::lines::BUDGETS {
        let st = cargo()
            .args(["build", "--quiet", "--locked", "-p", budget.package])
            .args(["--bin", budget.bin])
            .current_dir(root())
            .status()?;
        if !st.success() {
            return Err(std::io::Error::other(format!(
                "building {} failed",
                budget.bin
            )));
        }
        let dep_info =
            std::fs::read_to_string(target().join("debug").join(format!("{}.d", budget.bin)))?;
        let root = root();
        let files = xtask::lines::sources_in_dep_info(&dep_info, &root);
        let own_dir = files
            .iter()
            .find(|f| f.ends_with("src/main.rs"))
            .and_then(|f| f.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        let count = xtask::lines::Count::of(&root, &files)?;
        let (report, ok) = count.check(budget, &own_dir);
        print!("{report}");
        if !ok {
            over.push(budget.bin);
        }
    }
    if over.is_empty() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "past the line budget: {}",
            over.join(", ")
        )))
    }
}
