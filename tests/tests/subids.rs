//! Subordinate ids: a subspace whose user namespace maps, beside the tenant
//! at 0, the ranges the subordinate id files give it (`--map-auto`), and
//! one that keeps the tenant's own ids (`--map-current-user`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use spacer_tests::*;

/// Subordinate id files in a directory every uid can read, removed on drop.
struct SubidFiles(PathBuf);

impl SubidFiles {
    fn new(subuid: &str, subgid: &str) -> SubidFiles {
        let dir = std::env::temp_dir().join(format!(
            "spacer-subids-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("subuid"), subuid).unwrap();
        std::fs::write(dir.join("subgid"), subgid).unwrap();
        SubidFiles(dir)
    }

    fn args(&self) -> [String; 4] {
        [
            "--subuid".into(),
            self.0.join("subuid").display().to_string(),
            "--subgid".into(),
            self.0.join("subgid").display().to_string(),
        ]
    }
}

impl Drop for SubidFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn policy(subids: bool) -> String {
    format!("[[rule]]\nuid = {TENANT}\nallow = [\"user\", \"mnt\"]\nsubids = {subids}\n")
}

fn start(subids: bool, files: &SubidFiles) -> Broker {
    let args = files.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Broker::start_with(&policy(subids), &args)
}

const ENTRY: &str = "4343:200000:65536\n";

#[test]
fn map_auto_maps_the_tenant_at_0_and_its_subordinate_ids_from_1() {
    let files = SubidFiles::new(&format!("bob:100000:65536\n{ENTRY}"), ENTRY);
    let b = start(true, &files);
    let base = b.fd_counts();
    let out = b.spacer_as(
        TENANT,
        TENANT,
        &[
            "run",
            "--user",
            "--map-auto",
            "--",
            "sh",
            "-c",
            "cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups; id -u",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", b.log_text());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["0", "4343", "1"],
            vec!["1", "200000", "65536"],
            vec!["0", "4343", "1"],
            vec!["1", "200000", "65536"],
            vec!["allow"],
            vec!["0"],
        ],
        "{err}"
    );
    let subspace = || {
        b.decisions()
            .into_iter()
            .find(|d| d["request"] == "subspace")
    };
    assert!(eventually(Duration::from_secs(3), || subspace().is_some()));
    let d = subspace().unwrap();
    assert_eq!(d["decision"], "allow");
    assert_eq!(d["map"], "auto");
    assert_eq!(d["uid_map"], "0 4343 1,1 200000 65536");
    assert_eq!(d["gid_map"], "0 4343 1,1 200000 65536");
    b.assert_fds_back_to(&base);
}

#[test]
fn inside_chown_and_tar_keep_owners_that_the_host_sees_as_subordinate_ids() {
    let files = SubidFiles::new(ENTRY, ENTRY);
    let b = start(true, &files);
    // A directory of the tenant's, where it can reach it.
    let work = b.dir().join("work");
    std::fs::create_dir(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(TENANT), Some(TENANT)).unwrap();
    let script = format!(
        "cd {w} && touch f && chown 1000:1000 f && mkdir x && touch x/a x/b && \
         chown 1:1 x/a && chown 2:3 x/b && tar cf t.tar x && rm -r x && \
         tar xpf t.tar && stat -c '%n %u %g' f x/a x/b",
        w = work.display()
    );
    let out = b.spacer_as(
        TENANT,
        TENANT,
        &["run", "--user", "--map-auto", "--", "sh", "-c", &script],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", b.log_text());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "f 1000 1000\nx/a 1 1\nx/b 2 3\n",
        "{err}"
    );
    let owner = |p: &str| {
        let m = std::fs::metadata(work.join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner("f"), (200_999, 200_999));
    assert_eq!(owner("x/a"), (200_000, 200_000));
    assert_eq!(owner("x/b"), (200_001, 200_002));
}

#[test]
fn map_auto_is_refused_without_the_grant_an_entry_or_with_an_overlap() {
    for (subids, subuid, want) in [
        (
            false,
            ENTRY.to_owned(),
            "subordinate ids not allowed by rule 1",
        ),
        (
            true,
            "bob:100000:65536\n".to_owned(),
            "no subordinate ids for 4343 in",
        ),
        (
            true,
            format!("{ENTRY}bob:265535:10\n"),
            "subuid:1: the range overlaps another owner's (line 2)",
        ),
        (
            true,
            "4343:500:65536\n".to_owned(),
            "the range reaches below 1000 (the host's system ids)",
        ),
    ] {
        let files = SubidFiles::new(&subuid, ENTRY);
        let b = start(subids, &files);
        let base = b.fd_counts();
        let out = b.spacer_as(
            TENANT,
            TENANT,
            &["run", "--user", "--map-auto", "--", "true"],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains(want), "{want:?} in {err}");
        let subspace = || {
            b.decisions()
                .into_iter()
                .find(|d| d["request"] == "subspace")
        };
        assert!(eventually(Duration::from_secs(3), || subspace().is_some()));
        assert_eq!(subspace().unwrap()["decision"], "deny");
        assert!(b.subspace_workers().is_empty());
        b.assert_fds_back_to(&base);
    }
}

#[test]
fn map_current_user_keeps_the_tenants_own_ids_inside() {
    let files = SubidFiles::new("", "");
    let b = start(false, &files);
    let out = b.spacer_as(
        TENANT,
        TENANT,
        &[
            "run",
            "--user",
            "--map-current-user",
            "--",
            "sh",
            "-c",
            "id -u; id -g; cat /proc/self/uid_map",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", b.log_text());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [vec!["4343"], vec!["4343"], vec!["4343", "4343", "1"]],
        "{err}"
    );
    // Rooms through it still work: its worker keeps its capabilities there.
    let out = b.spacer_as(
        TENANT,
        TENANT,
        &["run", "--user", "--map-current-user", "--mnt", "--", "true"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
