//! Subordinate ids: a subspace whose user namespace maps, beside the tenant
//! at 0, the ranges the subordinate id files give it (`--map-auto`), and
//! one that keeps the tenant's own ids (`--map-current-user`). The tenant
//! runs where it may not make user namespaces of its own, as on the hosts
//! this is for, and runs a real OCI runtime inside.

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

/// Runs `spacer ARGS` as the tenant on a host that forbids it user
/// namespaces of its own (`spacer-probe no-userns`).
fn restricted(b: &Broker, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(b.copy_bin("spacer-probe"));
    cmd.arg("no-userns")
        .arg(b.copy_bin("spacer"))
        .args(args)
        .env("SPACER_SOCKET", &b.socket)
        .current_dir(b.dir())
        .stdin(std::process::Stdio::null())
        .uid_gid(TENANT);
    output_retrying(&mut cmd)
}

/// The words of each line `out` printed (it must have succeeded), and its
/// stderr for messages.
fn words_of_success(b: &Broker, out: &std::process::Output) -> (Vec<Vec<String>>, String) {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}\n{}", b.log_text());
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    (lines, err)
}

const ENTRY: &str = "4343:200000:65536\n";

#[test]
fn map_auto_maps_the_tenant_at_0_and_its_subordinate_ids_from_1() {
    let files = SubidFiles::new(&format!("bob:100000:65536\n{ENTRY}"), ENTRY);
    let b = start(true, &files);
    let base = b.fd_counts();
    let out = restricted(
        &b,
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
    let (lines, err) = words_of_success(&b, &out);
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
    let out = restricted(
        &b,
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
        let out = restricted(&b, &["run", "--user", "--map-auto", "--", "true"]);
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
    let out = restricted(
        &b,
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
    let (lines, err) = words_of_success(&b, &out);
    assert_eq!(
        lines,
        [vec!["4343"], vec!["4343"], vec!["4343", "4343", "1"]],
        "{err}"
    );
    // Rooms through it still work: its worker keeps its capabilities there.
    let out = restricted(
        &b,
        &["run", "--user", "--map-current-user", "--mnt", "--", "true"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where the tools the container test needs are, or a clear failure.
fn tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("{name} is missing: install runc and busybox-static (.ci/run does)")
        })
}

#[test]
fn a_real_oci_runtime_runs_a_container_inside_where_the_tenant_may_not_make_user_namespaces() {
    // A host that forbids unprivileged user namespaces, played by a
    // seccomp filter on the tenant's whole process tree (`spacer-probe
    // no-userns`). There, `spacer run --user --map-auto` gives the tenant
    // a user namespace with its subordinate ids, in which runc runs a
    // busybox container with its own mount, PID, UTS, IPC and net
    // namespaces, as a subordinate id.
    let (runc, busybox) = (tool("runc"), tool("busybox"));
    let files = SubidFiles::new(ENTRY, ENTRY);
    let b = start(true, &files);
    let base = b.fd_counts();
    let work = b.dir().join("oci");
    std::fs::create_dir(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(TENANT), Some(TENANT)).unwrap();
    // The runtime's own template, with what this host's hybrid cgroup
    // layout needs: no cgroup namespace, no resource limits.
    let bundle = work.join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let out = std::process::Command::new(&runc)
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::os::unix::fs::chown(&bundle, Some(TENANT), Some(TENANT)).unwrap();
    let config = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
    spec["process"]["args"] = serde_json::json!([
        "sh",
        "-c",
        "echo host=$(hostname) id=$(id -u):$(id -g) pid=$$; \
         cat /proc/self/uid_map; touch /tmp/made-inside"
    ]);
    spec["hostname"] = "container".into();
    spec["root"]["readonly"] = false.into();
    let linux = &mut spec["linux"];
    linux.as_object_mut().unwrap().remove("resources");
    let kept: Vec<serde_json::Value> = linux["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] != "cgroup")
        .cloned()
        .collect();
    linux["namespaces"] = kept.into();
    std::fs::write(&config, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

    // The tenant builds the root file system and runs the container.
    let script = format!(
        "unshare --user true 2>/dev/null && echo userns-allowed || echo userns-forbidden; \
         \"$SPACER\" run --user --map-auto -- sh -c '\
           unshare --user true 2>/dev/null && echo inner-userns-allowed; \
           cd {bundle} && mkdir -p rootfs/bin rootfs/tmp && chmod 1777 rootfs/tmp && \
           cp {busybox} rootfs/bin/busybox && \
           for c in sh echo id hostname ls grep cat touch; do ln -s busybox rootfs/bin/$c; done && \
           {runc} --root {state} run spacer-test; echo runc=$?'",
        bundle = bundle.display(),
        busybox = busybox.display(),
        runc = runc.display(),
        state = work.join("state").display(),
    );
    let probe = b.copy_bin("spacer-probe");
    let out = output_retrying(
        std::process::Command::new(probe)
            .args(["no-userns", "sh", "-c", &script])
            .env("SPACER", b.copy_bin("spacer"))
            .env("SPACER_SOCKET", &b.socket)
            .current_dir(&work)
            .stdin(std::process::Stdio::null())
            .uid_gid(TENANT),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{err}");
    assert!(out.status.success(), "{err}\n{}", b.log_text());
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        lines,
        [
            "userns-forbidden",
            "host=container id=1000:1000 pid=1",
            "0 4343 1",
            "1 200000 65536",
            "runc=0",
        ],
        "{err}"
    );
    // Made by the container's uid 1000: the host sees the subordinate id.
    let made = std::fs::metadata(bundle.join("rootfs/tmp/made-inside")).unwrap();
    assert_eq!((made.uid(), made.gid()), (200_999, 200_999));
    assert!(eventually(Duration::from_secs(5), || b
        .subspace_workers()
        .is_empty()));
    b.assert_fds_back_to(&base);
}

/// Subordinate peers: uids 1..=6 inside a `--map-auto` subspace of the
/// tenant's are host uids 200000..=200005, its subordinate ids.
const OWN: &str = "4343:200000:65536\n";

/// Runs `spacer-probe as-ids 6 N SECS` inside a `--map-auto` subspace of
/// the tenant's: six of its subordinate uids, each holding N connections
/// to the host broker's socket for SECS; returns every outcome.
fn six_subordinate_uids(b: &Broker, n: usize, secs: f64) -> Vec<String> {
    let probe = b.copy_bin("spacer-probe");
    let out = restricted(
        b,
        &[
            "run",
            "--user",
            "--map-auto",
            "--",
            probe.to_str().unwrap(),
            "as-ids",
            "6",
            &n.to_string(),
            &secs.to_string(),
        ],
    );
    let (lines, err) = words_of_success(b, &out);
    let text: String = lines
        .iter()
        .map(|l| l.join(" "))
        .collect::<Vec<_>>()
        .join(" ");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}\n{err}"));
    v["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap().to_owned())
        .collect()
}

/// How many outcomes are `ok` (`what` = "ok"), or a refusal containing
/// `what`.
fn count(outcomes: &[String], what: &str) -> usize {
    outcomes
        .iter()
        .filter(|o| {
            if what == "ok" {
                *o == "ok"
            } else {
                o.contains(what)
            }
        })
        .count()
}

#[test]
fn a_tenants_subordinate_uids_share_its_connection_cap_and_are_audited_as_the_tenant() {
    let files = SubidFiles::new(OWN, OWN);
    let args = files.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let b = Broker::start_with(
        &format!(
            "[[rule]]\nuid = {TENANT}\nallow = [\"user\", \"uts\"]\nsubids = true\nmax_connections = 20\n"
        ),
        &args,
    );
    let base = b.fd_counts();
    // Held for 2 s, so that all six hold theirs at once.
    let outcomes = six_subordinate_uids(&b, 10, 2.0);
    let ok = count(&outcomes, "ok");
    let capped = count(&outcomes, "max_connections 20 reached");
    eprintln!("60 connections from 6 subordinate uids: {ok} served, {capped} refused");
    // Exactly the tenant's cap across its ids (`spacer run` keeps no
    // connection of its own open: it talks through the subspace's conn).
    assert_eq!(ok, 20, "{outcomes:?}");
    assert_eq!(ok + capped, 60, "{outcomes:?}");
    // Each served request is audited with the uid the kernel reported and
    // the tenant it was decided as and charged to.
    let sub: Vec<_> = b
        .decisions()
        .into_iter()
        .filter(|d| (200_000..=200_005).contains(&d["uid"].as_u64().unwrap()))
        .collect();
    assert_eq!(sub.len(), ok, "{sub:?}");
    assert!(
        sub.iter()
            .all(|d| d["tenant"]["uid"] == TENANT && d["decision"] == "allow" && d["rule"] == 1),
        "{sub:?}"
    );
    let refusals: Vec<_> = b
        .events()
        .into_iter()
        .filter(|e| e["message"] == "connection refused")
        .collect();
    assert!(
        refusals.iter().all(|e| e["tenant"] == TENANT),
        "{refusals:?}"
    );
    b.assert_fds_back_to(&base);
}

#[test]
fn a_flood_from_one_tenants_subordinate_uids_leaves_another_tenant_served() {
    // The broker's own cap is the only one in reach (the rule allows 1,000
    // per uid); its last slot is kept for uids with none open.
    let files = SubidFiles::new(OWN, OWN);
    let mut args: Vec<String> = files.args().into();
    args.extend(["--max-connections".into(), "24".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let b = Broker::start_with(
        &format!(
            "[[rule]]\nuid = {TENANT}\nallow = [\"user\", \"uts\"]\nsubids = true\nmax_connections = 1000\n[[rule]]\nuid = {STRANGER}\nallow = [\"uts\"]\n"
        ),
        &args,
    );
    let base = b.fd_counts();
    let held = {
        let b = &b;
        std::thread::scope(|s| {
            let flood = s.spawn(|| six_subordinate_uids(b, 10, 3.0));
            // While the six hold what they got, another tenant connects.
            std::thread::sleep(Duration::from_millis(1500));
            let other = b.probe_as(STRANGER, STRANGER, &["conns", "1"]);
            assert_eq!(
                other["outcomes"][0], "ok",
                "another tenant refused: {other}"
            );
            flood.join().unwrap()
        })
    };
    let ok = count(&held, "ok");
    eprintln!("60 connections from 6 subordinate uids with 24 in all: {ok} served");
    assert!(ok <= 23, "{held:?}");
    assert_eq!(count(&held, "nearly reached") + ok, 60, "{held:?}");
    b.assert_fds_back_to(&base);
}

#[test]
fn a_tenants_request_rate_holds_across_its_subordinate_uids() {
    let files = SubidFiles::new(OWN, OWN);
    let args = files.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let b = Broker::start_with(
        &format!(
            "[[rule]]\nuid = {TENANT}\nallow = [\"user\", \"uts\"]\nsubids = true\nrequests_per_minute = 8\n"
        ),
        &args,
    );
    let base = b.fd_counts();
    let outcomes = six_subordinate_uids(&b, 2, 0.0);
    // The subspace of `spacer run` was the tenant's first request.
    assert_eq!(count(&outcomes, "ok"), 7, "{outcomes:?}");
    assert_eq!(
        count(&outcomes, "requests_per_minute 8 reached"),
        5,
        "{outcomes:?}"
    );
    b.assert_fds_back_to(&base);
}
