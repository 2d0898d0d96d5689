//! Keeps `docs/PROTOCOL.md` honest: every `<!-- check: ... -->` example is
//! decoded and re-encoded by this crate.

use spacer_proto::wire::{ErrorKind, Request, Response};
use spacer_proto::{NsType, RoomOptions};

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md")).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// `(check line, hex bytes)` for every example.
fn examples() -> Vec<(String, Vec<u8>)> {
    let text = doc();
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(check) = line
            .strip_prefix("<!-- check: ")
            .and_then(|l| l.strip_suffix(" -->"))
        else {
            continue;
        };
        let hex: String = lines
            .by_ref()
            .skip_while(|l| *l != "```hex")
            .skip(1)
            .take_while(|l| *l != "```")
            .collect::<Vec<_>>()
            .join(" ");
        out.push((check.to_owned(), unhex(&hex)));
    }
    out
}

#[test]
fn every_example_is_what_the_code_sends_and_accepts() {
    let ex = examples();
    assert_eq!(ex.len(), 7, "examples in docs/PROTOCOL.md");
    for (check, bytes) in ex {
        let words: Vec<&str> = check.splitn(3, ' ').collect();
        match words.as_slice() {
            ["request", op, rest] => {
                let mut words = rest.split(' ');
                let spaces = words.next().unwrap().trim_start_matches("0x");
                let spaces = u64::from_str_radix(spaces, 16).unwrap();
                let mut options = RoomOptions::new();
                for w in words {
                    options = match w.split_once('=') {
                        None if w == "loopback_up" => options.loopback_up(),
                        Some(("hostname", v)) => options.hostname(v),
                        Some(("domainname", v)) => options.domainname(v),
                        Some(("monotonic_offset", v)) => {
                            options.monotonic_offset(v.parse().unwrap())
                        }
                        Some(("boottime_offset", v)) => options.boottime_offset(v.parse().unwrap()),
                        _ => panic!("unknown option {w:?} in {check:?}"),
                    };
                }
                let want = match *op {
                    "rooms" => Request::Rooms { spaces, options },
                    _ => Request::Subspace {
                        spaces,
                        map: spacer_proto::MapChoice::Root,
                    },
                };
                assert_eq!(Request::decode(&bytes).as_ref(), Ok(&want), "{check}");
                assert_eq!(want.encode(), bytes, "{check}");
            }
            ["response", "rooms", fds] => {
                let types: Vec<NsType> = fds
                    .split(' ')
                    .map(|kv| NsType::from_name(kv.split('=').next().unwrap()).unwrap())
                    .collect();
                assert_eq!(Response::Rooms { types }.encode(), bytes, "{check}");
            }
            ["response", "subspace", fds] => {
                let resp = Response::Subspace {
                    user: fds.contains("user="),
                    pid: fds.contains("pid="),
                };
                assert_eq!(resp.encode(), bytes, "{check}");
            }
            ["response", "error", rest] => {
                let (kind, reason) = rest.split_once(' ').unwrap();
                let kind = match kind {
                    "denied" => ErrorKind::Denied,
                    "invalid" => ErrorKind::Invalid,
                    "failed" => ErrorKind::Failed,
                    _ => ErrorKind::Unavailable,
                };
                let resp = Response::error(kind, reason.trim_matches('"'));
                assert_eq!(resp.encode(), bytes, "{check}");
                let decoded = spacer_proto::wire::decode_reply(&bytes, Vec::new()).unwrap();
                assert!(matches!(decoded, spacer_proto::wire::Reply::Error { .. }));
            }
            _ => panic!("unknown check {check:?}"),
        }
    }
}

#[test]
fn documented_limits_match_the_code() {
    let text = doc();
    assert!(text.contains(&format!(
        "at most **{} bytes**",
        spacer_proto::wire::MAX_REQUEST_BYTES
    )));
    assert!(text.contains(&format!(
        "at least **{} bytes**",
        spacer_proto::wire::MAX_RESPONSE_BYTES
    )));
    assert!(text.contains(&format!("**{} fds**", spacer_proto::wire::MAX_RESPONSE_FDS)));
    assert!(text.contains(&format!(
        "at most {} bytes, UTF-8",
        spacer_proto::wire::MAX_REASON_BYTES
    )));
    for t in NsType::ALL {
        let row = format!("| `{}` | `0x{:08x}`", t.name(), t.flag().bits());
        assert!(text.contains(&row), "{row}");
    }
}
