use super::*;
use proptest::prelude::*;
use spacer_proto::Spaces;

/// A fixed user and group database for tests.
struct Fixed;

impl Resolver for Fixed {
    fn user(&self, name: &str) -> Option<u32> {
        match name {
            "root" => Some(0),
            "al" => Some(1001),
            "alice" => Some(1000),
            "1000" => Some(4242),
            _ => None,
        }
    }
    fn group(&self, name: &str) -> Option<u32> {
        match name {
            "dev" => Some(500),
            "devops" => Some(501),
            _ => None,
        }
    }
}

fn p(text: &str) -> Policy {
    parse("test.toml", text, &Fixed, 65534).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> Diagnostic {
    *parse("test.toml", text, &Fixed, 65534).unwrap_err()
}

fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer<'_> {
    Peer { uid, gid, groups }
}

const NO_USE: Usage = Usage {
    requests_last_minute: 0,
    live_subspaces: 0,
    depth: 0,
    live_rooms: [0; 6],
};

fn allowed(pol: &Policy, pe: &Peer<'_>, spaces: Spaces) -> bool {
    matches!(
        pol.decide(pe, Op::Rooms, spaces, &[], &NO_USE),
        Decision::Allow { .. }
    )
}

#[test]
fn embedded_default_allows_root_everything_and_others_nothing() {
    let pol = embedded_default();
    let all = Spaces::ROOMS | Spaces::SUBSPACE;
    assert!(allowed(&pol, &peer(0, 0, &[]), all));
    assert!(!allowed(&pol, &peer(1000, 1000, &[0]), Spaces::NET));
    assert!(!allowed(&pol, &peer(65534, 65534, &[]), Spaces::UTS));
}

#[test]
fn first_match_decides_and_defaults_catch_the_rest() {
    let pol = p(r#"
[defaults]
allow = ["uts"]

[[rule]]
uid = 1000
allow = ["net"]

[[rule]]
group = "dev"
allow = ["net", "mnt"]
"#);
    // uid 1000 is in dev too, but rule 1 comes first.
    assert!(allowed(&pol, &peer(1000, 1000, &[500]), Spaces::NET));
    assert!(!allowed(&pol, &peer(1000, 1000, &[500]), Spaces::MNT));
    assert!(allowed(&pol, &peer(2000, 2000, &[500]), Spaces::MNT));
    assert!(
        allowed(&pol, &peer(3000, 500, &[]), Spaces::MNT),
        "primary gid counts"
    );
    assert!(allowed(&pol, &peer(3000, 3000, &[]), Spaces::UTS));
    assert!(!allowed(&pol, &peer(3000, 3000, &[]), Spaces::NET));
}

#[test]
fn one_type_missing_denies_the_whole_request_naming_it() {
    let pol = p("[[rule]]\nuid = 1000\nallow = [\"net\"]\n");
    match pol.decide(
        &peer(1000, 1, &[]),
        Op::Rooms,
        Spaces::NET | Spaces::MNT,
        &[],
        &NO_USE,
    ) {
        Decision::Deny { rule, reason } => {
            assert_eq!(rule.id(), "1");
            assert_eq!(reason, "mnt not allowed by rule 1");
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn lookalikes_never_cross_match() {
    let pol = p(r#"
[[rule]]
user = "al"
allow = ["net"]
[[rule]]
uid = 1000
allow = ["uts"]
[[rule]]
group = "dev"
allow = ["ipc"]
[[rule]]
user = "1000"
allow = ["time"]
"#);
    // alice (1000) is not al (1001).
    assert!(!allowed(&pol, &peer(1000, 1000, &[]), Spaces::NET));
    assert!(allowed(&pol, &peer(1001, 1001, &[]), Spaces::NET));
    // 10000 is not 1000, and 100 is not 1000.
    assert!(!allowed(&pol, &peer(10000, 10000, &[]), Spaces::UTS));
    assert!(!allowed(&pol, &peer(100, 100, &[]), Spaces::UTS));
    // devops (501) is not dev (500).
    assert!(!allowed(&pol, &peer(7, 7, &[501]), Spaces::IPC));
    // The user *named* "1000" is uid 4242, not uid 1000.
    assert!(allowed(&pol, &peer(4242, 4242, &[]), Spaces::TIME));
    assert!(!allowed(&pol, &peer(1000, 1000, &[]), Spaces::TIME));
}

#[test]
fn overflow_uid_is_matched_only_by_name() {
    let pol = p(r#"
[[rule]]
gid = 65534
allow = ["net"]
[[rule]]
group = "dev"
allow = ["net"]
"#);
    assert!(!allowed(&pol, &peer(65534, 65534, &[500]), Spaces::NET));
    let pol = p("[[rule]]\nuid = 65534\nallow = [\"net\"]\n");
    assert!(allowed(&pol, &peer(65534, 65534, &[]), Spaces::NET));
}

#[test]
fn limits_deny_with_the_limit_named_in_order() {
    let pol = p(r#"
[[rule]]
uid = 1
allow = ["user", "pid", "net"]
requests_per_minute = 5
max_subspaces = 2
max_depth = 1
max_connections = 3
max_rooms = 4
"#);
    let pe = peer(1, 1, &[]);
    let deny = |op, spaces, usage: Usage| match pol.decide(&pe, op, spaces, &[], &usage) {
        Decision::Deny { reason, .. } => reason,
        d => panic!("{d:?}"),
    };
    let u = |r, s, d| Usage {
        requests_last_minute: r,
        live_subspaces: s,
        depth: d,
        live_rooms: [0; 6],
    };
    // Live rooms are counted per type (cgroup, ipc, mnt, net, time, uts).
    let mut held = u(0, 0, 0);
    held.live_rooms[3] = 4;
    assert_eq!(
        deny(Op::Rooms, Spaces::NET, held),
        "net: 4 live rooms held (limit 4, rule 1)"
    );
    assert!(matches!(
        pol.decide(&pe, Op::Subspace, Spaces::USER, &[], &held),
        Decision::Allow { .. }
    ));
    held.live_rooms[3] = 3;
    assert!(matches!(
        pol.decide(&pe, Op::Rooms, Spaces::NET, &[], &held),
        Decision::Allow { .. }
    ));
    assert_eq!(
        deny(Op::Rooms, Spaces::NET, u(5, 0, 0)),
        "requests_per_minute 5 reached (rule 1)"
    );
    assert_eq!(
        deny(Op::Subspace, Spaces::USER, u(0, 2, 0)),
        "max_subspaces 2 reached (rule 1)"
    );
    assert_eq!(
        deny(Op::Subspace, Spaces::USER, u(9, 9, 1)),
        "max_depth 1 reached (rule 1)"
    );
    // Types first: a request denied for its types says so, whatever the counters.
    assert_eq!(
        deny(Op::Rooms, Spaces::MNT, u(9, 9, 9)),
        "mnt not allowed by rule 1"
    );
    // Subspace limits do not apply to rooms.
    assert!(matches!(
        pol.decide(&pe, Op::Rooms, Spaces::NET, &[], &u(4, 9, 9)),
        Decision::Allow { .. }
    ));
    assert_eq!(pol.connection_limit(&pe), Some(3));
}

#[test]
fn errors_point_at_line_and_column() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "[[rule]]\nuid = 1\nallow = [\"nett\"]\n",
            3,
            "unknown namespace type \"nett\"",
        ),
        (
            "[[rule]]\nuid = 1\nalow = [\"net\"]\n",
            3,
            "unknown field `alow`",
        ),
        ("[[rule]]\nallow = [\"net\"]\n", 1, "no matcher"),
        (
            "[[rule]]\nuid = 1\nuser = \"alice\"\nallow = []\n",
            3,
            "two matchers (uid and user)",
        ),
        (
            "[[rule]]\nuid = 1\nallow = [\"net\", \"net\"]\n",
            3,
            "net is listed twice",
        ),
        (
            "[[rule]]\nuser = \"mallory\"\n",
            2,
            "unknown user \"mallory\"",
        ),
        (
            "[[rule]]\ngroup = \"nogroup\"\n",
            2,
            "unknown group \"nogroup\"",
        ),
        ("[[rule]]\nuid = -1\n", 2, "an id is a number"),
        ("[[rule]]\nuid = 4294967295\n", 2, "an id is a number"),
        (
            "[[rule]]\nuid = 1\nrequests_per_minute = -5\n",
            3,
            "requests_per_minute must be from 0",
        ),
        (
            "[[rule]]\nuid = 1\nmax_depth = 99\n",
            3,
            "max_depth must be from 0 to 32",
        ),
        (
            "[defaults]\nallow = [\"net\"]\nfoo = 1\n",
            3,
            "unknown field `foo`",
        ),
        ("[defaults\n", 1, ""),
        ("[[rule]]\nuid = 1\nallow = \"net\"\n", 3, ""),
        ("[[rule]]\nuid = 1\nname = \"\"\n", 3, "rule name"),
    ];
    for (text, line, needle) in cases {
        let e = err(text);
        assert_eq!(e.line, *line, "{text:?} -> {e}");
        assert!(e.message.contains(needle), "{text:?} -> {e}");
        let shown = e.to_string();
        assert!(shown.starts_with(&format!("test.toml:{line}:")), "{shown}");
        assert!(shown.contains('^'), "{shown}");
    }
}

#[test]
fn rendered_error_marks_the_offending_value() {
    let e = err("[[rule]]\nuid = 1\nallow = [\"net\", \"nett\"]\n");
    assert_eq!(e.column, 17);
    assert_eq!(
        e.to_string().lines().skip(1).collect::<Vec<_>>(),
        vec![
            "  |",
            "3 | allow = [\"net\", \"nett\"]",
            "  |                 ^^^^^^"
        ]
    );
}

#[test]
fn warnings_name_shadowed_rules_and_the_user_caveat() {
    let pol = p(r#"
[[rule]]
user = "alice"
allow = ["net"]
[[rule]]
uid = 1000
allow = ["user"]
[[rule]]
group = "dev"
allow = []
[[rule]]
gid = 500
allow = []
"#);
    let dead: Vec<(usize, usize)> = pol
        .shadowed()
        .into_iter()
        .map(|(later, earlier)| (later.index, earlier.index))
        .collect();
    assert_eq!(dead, [(2, 1), (4, 3)]);
    let w = pol.warnings();
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(
        w[0].starts_with("rule 2 (uid 1000) can never match: rule 1 (user \"alice\" (uid 1000))")
    );
    assert!(w[1].starts_with("rule 4 (gid 500) can never match: rule 3"));
    assert!(w[2].contains("rule 2 grants user: a holder can create every other namespace type"));
}

#[test]
fn a_uid_rule_and_a_gid_rule_with_the_same_number_both_stay_reachable() {
    let pol = p("[[rule]]\nuid = 7\n[[rule]]\ngid = 7\n[[rule]]\nuser = \"alice\"\n");
    assert!(pol.shadowed().is_empty());
}

#[test]
fn ownership_problem_names_the_owner_or_the_writable_bits() {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("spacer-policy-mode-{}", std::process::id()));
    std::fs::write(&path, "").unwrap();
    let problem = |mode: u32| {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        ownership_problem(&std::fs::metadata(&path).unwrap())
    };
    let results = [problem(0o644), problem(0o664), problem(0o666)];
    std::fs::remove_file(&path).unwrap();
    let me = nix::unistd::geteuid().as_raw();
    if me == 0 {
        assert_eq!(results[0], None);
        assert_eq!(
            results[1].as_deref(),
            Some("is writable by its group (mode 0664)")
        );
        assert_eq!(
            results[2].as_deref(),
            Some("is writable by others (mode 0666)")
        );
    } else {
        let owned = format!("is owned by uid {me}");
        assert!(results.iter().all(|r| r.as_deref() == Some(&owned[..])));
    }
}

#[test]
fn broker_defaults_cap_connections_subspaces_and_rooms_only() {
    let d = Limits::broker_defaults();
    assert_eq!(
        d.set(),
        [
            ("max_subspaces", DEFAULT_PER_UID_CAP),
            ("max_connections", DEFAULT_PER_UID_CAP),
            ("max_rooms", DEFAULT_PER_UID_CAP)
        ]
    );
}

#[test]
fn digest_changes_with_content() {
    let a = p("[[rule]]\nuid = 1\n");
    let b = p("[[rule]]\nuid = 2\n");
    assert_eq!(a.digest().len(), 64);
    assert_ne!(a.digest(), b.digest());
}

fn arb_policy() -> impl Strategy<Value = String> {
    let matcher = prop_oneof![
        (0u32..5).prop_map(|u| format!("uid = {u}")),
        (0u32..5).prop_map(|g| format!("gid = {g}")),
        Just("user = \"alice\"".to_owned()),
        Just("group = \"dev\"".to_owned()),
    ];
    let types = proptest::sample::subsequence(
        vec!["cgroup", "ipc", "mnt", "net", "time", "uts", "user", "pid"],
        0..=8,
    );
    let rule = (matcher, types, proptest::option::of(0u32..4)).prop_map(|(m, t, rate)| {
        let allow = t
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rate = rate
            .map(|r| format!("requests_per_minute = {r}\n"))
            .unwrap_or_default();
        format!("[[rule]]\n{m}\nallow = [{allow}]\n{rate}")
    });
    proptest::collection::vec(rule, 0..6)
        .prop_map(|rules| format!("[defaults]\nallow = [\"uts\"]\n\n{}", rules.join("\n")))
}

proptest! {
    #[test]
    fn decisions_never_panic_and_unmatched_peers_get_defaults(
        text in arb_policy(),
        uid in 0u32..12,
        gid in 0u32..12,
        groups in proptest::collection::vec(0u32..12, 0..4),
        bits in any::<u64>(),
        rpm in 0u32..6,
    ) {
        let pol = p(&text);
        let pe = peer(uid, gid, &groups);
        let spaces = Spaces::from_bits_truncate(bits);
        let usage = Usage { requests_last_minute: rpm, live_subspaces: 0, depth: 0, live_rooms: [0; 6] };
        let d = pol.decide(&pe, Op::Rooms, spaces, &[], &usage);
        let matched = pol.rules().iter().any(|r| match &r.matcher {
            Matcher::Uid(u) | Matcher::User { uid: u, .. } => *u == uid,
            Matcher::Gid(g) | Matcher::Group { gid: g, .. } => *g == gid || groups.contains(g),
        });
        if !matched {
            let want_allow = Spaces::UTS.contains(spaces);
            match d {
                Decision::Allow { rule } => { prop_assert!(want_allow); prop_assert_eq!(rule, RuleRef::Defaults); }
                Decision::Deny { rule, .. } => { prop_assert!(!want_allow); prop_assert_eq!(rule, RuleRef::Defaults); }
            }
        }
    }

    #[test]
    fn random_text_never_panics_the_parser(text in ".{0,200}") {
        let _ = parse("fuzz.toml", &text, &Fixed, 65534);
    }
}

#[test]
fn options_are_allowed_by_name_and_denied_naming_the_option() {
    use spacer_proto::RoomOption::*;
    let pol = p(r#"
[defaults]
allow = ["uts"]
options = ["hostname"]

[[rule]]
uid = 1000
allow = ["net", "uts", "time"]
options = ["time-offsets", "loopback"]
"#);
    let pe = peer(1000, 1, &[]);
    assert_eq!(pol.rules()[0].grant.options, vec![Loopback, TimeOffsets]);
    let decide = |pe: &Peer<'_>, spaces, opts: &[spacer_proto::RoomOption]| match pol.decide(
        pe,
        Op::Rooms,
        spaces,
        opts,
        &NO_USE,
    ) {
        Decision::Allow { .. } => Ok(()),
        Decision::Deny { reason, .. } => Err(reason),
    };
    assert_eq!(
        decide(&pe, Spaces::NET | Spaces::TIME, &[Loopback, TimeOffsets]),
        Ok(())
    );
    assert_eq!(
        decide(&pe, Spaces::UTS, &[Hostname]),
        Err("option hostname not allowed by rule 1".into())
    );
    // Types are checked first: the reason names what is missing first.
    assert_eq!(
        decide(&pe, Spaces::MNT, &[Hostname]),
        Err("mnt not allowed by rule 1".into())
    );
    let other = peer(2000, 2, &[]);
    assert_eq!(decide(&other, Spaces::UTS, &[Hostname]), Ok(()));
    assert_eq!(
        decide(&other, Spaces::UTS, &[Loopback]),
        Err("option loopback not allowed by defaults".into())
    );
}

#[test]
fn option_errors_point_at_the_item() {
    let e = err("[[rule]]\nuid = 1\nallow = [\"net\"]\noptions = [\"loopback\", \"lo\"]\n");
    let text = e.to_string();
    assert!(
        text.contains("unknown option \"lo\" (known: loopback hostname time-offsets)"),
        "{text}"
    );
    assert!(text.contains("test.toml:4:24"), "{text}");
    let e = err("[defaults]\noptions = [\"hostname\", \"hostname\"]\n");
    assert!(e.to_string().contains("hostname is listed twice"), "{e}");
    let e = err("[[rule]]\nuid = 1\noptions = \"loopback\"\n");
    assert!(e.to_string().contains("test.toml:3"), "{e}");
}

#[test]
fn an_option_without_its_type_is_a_warning() {
    let pol = p("[[rule]]\nuid = 1\nallow = [\"uts\"]\noptions = [\"hostname\", \"loopback\"]\n");
    let w = pol.warnings();
    assert_eq!(
        w,
        vec!["rule 1 allows option loopback but not net: the option can never be used".to_owned()]
    );
}

#[test]
fn the_embedded_default_gives_root_every_option() {
    let pol = embedded_default();
    assert_eq!(
        pol.rules()[0].grant.options,
        spacer_proto::RoomOption::ALL.to_vec()
    );
    assert!(pol.defaults().options.is_empty());
}
