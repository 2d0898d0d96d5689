//! Keeps `docs/PROTOCOL.md` honest: every `<!-- check: ... -->` example is
//! decoded and re-encoded by this crate.

use std::collections::BTreeMap;

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

/// The rows of the markdown table that follows the line `heading`, as
/// cells with their surrounding spaces trimmed.
fn table_after(text: &str, heading: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip_while(|l| *l != heading)
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

#[test]
fn the_limits_table_is_the_crates_constants() {
    use spacer_proto::{idmap, options, wire};
    let code: BTreeMap<&str, u64> = [
        ("wire::VERSION", u64::from(wire::VERSION)),
        ("wire::MAX_REQUEST_BYTES", wire::MAX_REQUEST_BYTES as u64),
        ("wire::MAX_RESPONSE_BYTES", wire::MAX_RESPONSE_BYTES as u64),
        ("wire::MAX_RESPONSE_FDS", wire::MAX_RESPONSE_FDS as u64),
        ("wire::MAX_REASON_BYTES", wire::MAX_REASON_BYTES as u64),
        ("options::MAX_NAME_BYTES", options::MAX_NAME_BYTES as u64),
        ("options::MAX_OFFSET_SECS", options::MAX_OFFSET_SECS as u64),
        ("idmap::MAX_EXTENTS", idmap::MAX_EXTENTS as u64),
    ]
    .into_iter()
    .collect();
    let text = doc();
    let rows = table_after(&text, "## Limits");
    let documented: BTreeMap<&str, u64> = rows
        .iter()
        .map(|row| {
            let [_, value, constant] = &row[..] else {
                panic!("a limits row has three cells: {row:?}");
            };
            let number = value.split(' ').next().unwrap();
            (
                constant.trim_matches('`'),
                number
                    .parse()
                    .unwrap_or_else(|_| panic!("{value:?} starts with a number")),
            )
        })
        .collect();
    assert_eq!(documented, code, "docs/PROTOCOL.md, \"## Limits\"");
    // Every size the text gives in bytes is one of the byte limits, and
    // every count of fds the response limit.
    let bytes: Vec<u64> = rows
        .iter()
        .filter(|r| r[1].ends_with(" bytes"))
        .map(|r| documented[r[2].trim_matches('`')])
        .collect();
    let words: Vec<&str> = text.split_whitespace().collect();
    for pair in words.windows(2) {
        let number = pair[0].trim_start_matches('*');
        let Ok(n) = number.parse::<u64>() else {
            continue;
        };
        let unit = pair[1].trim_end_matches(['*', ',', '.', ')', ';']);
        match unit {
            "bytes" => assert!(bytes.contains(&n), "{n} bytes in the text: {bytes:?}"),
            "fds" => assert_eq!(n, wire::MAX_RESPONSE_FDS as u64, "{n} fds in the text"),
            _ => {}
        }
    }
    let secs = options::MAX_OFFSET_SECS;
    assert!(text.contains(&format!("at most\n  {secs} seconds either way")));
}

/// Whether `text` fits the documented `pattern`, where `N` stands for a
/// number, `<...>` for a word or more, and `...` or `…` for anything.
fn fits(pattern: &str, text: &str) -> bool {
    fn go(p: &str, t: &str) -> bool {
        if p.is_empty() {
            return t.is_empty();
        }
        let wild = |rest: &str| (0..=t.len()).any(|i| t.is_char_boundary(i) && go(rest, &t[i..]));
        if let Some(rest) = p.strip_prefix("...").or_else(|| p.strip_prefix('…')) {
            return wild(rest);
        }
        if p.starts_with('<') {
            if let Some(end) = p.find('>') {
                return (1..=t.len()).any(|i| t.is_char_boundary(i) && go(&p[end + 1..], &t[i..]));
            }
        }
        if let Some(rest) = p.strip_prefix('N') {
            let digits = t.bytes().take_while(u8::is_ascii_digit).count();
            return digits > 0 && go(rest, &t[digits..]);
        }
        let c = p.chars().next().unwrap();
        t.starts_with(c) && go(&p[c.len_utf8()..], &t[c.len_utf8()..])
    }
    go(pattern, text)
}

#[test]
fn the_invalid_reasons_listed_are_the_ones_the_code_gives() {
    use spacer_proto::wire::RequestError;
    use spacer_proto::{Offset, SpaceError, Spaces};
    // Every reason this crate gives for an invalid request (a new
    // RequestError variant must be added here: the match is exhaustive).
    let request_errors = [
        RequestError::Malformed,
        RequestError::Version(2),
        RequestError::UnknownOp,
        RequestError::OptionsOnSubspace,
        RequestError::Trailing,
        RequestError::MapOnRooms,
        RequestError::UnknownMap,
    ];
    for e in request_errors {
        match e {
            RequestError::Malformed
            | RequestError::Version(_)
            | RequestError::UnknownOp
            | RequestError::OptionsOnSubspace
            | RequestError::Trailing
            | RequestError::MapOnRooms
            | RequestError::UnknownMap => {}
        }
    }
    let mut code: Vec<String> = request_errors.iter().map(|e| e.to_string()).collect();
    code.extend([SpaceError::NoSpace, SpaceError::OutOfSpace].map(|e| e.to_string()));
    let option_errors = [
        (RoomOptions::new().loopback_up(), Spaces::UTS),
        (RoomOptions::new().hostname("-bad"), Spaces::UTS),
        (RoomOptions::new().domainname("a..b"), Spaces::UTS),
        (
            RoomOptions::new().monotonic_offset(Offset::from_secs(i64::MAX)),
            Spaces::TIME,
        ),
        (
            RoomOptions::new().boottime_offset(Offset::from_secs(i64::MIN)),
            Spaces::TIME,
        ),
    ];
    for (options, spaces) in option_errors {
        code.push(options.check(spaces).unwrap_err().to_string());
    }
    // The broker's, made from this crate's limit.
    code.push(format!(
        "request larger than {} bytes",
        spacer_proto::wire::MAX_REQUEST_BYTES
    ));

    let text = doc();
    let rows = table_after(&text, "### Reasons");
    let invalid = &rows
        .iter()
        .find(|r| r[0] == "invalid")
        .expect("an invalid row in the reasons table")[1];
    let documented: Vec<&str> = invalid
        .split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|r| r.split(" / "))
        .collect();
    for reason in &code {
        assert!(
            documented.iter().any(|p| fits(p, reason)),
            "{reason:?} is not in the reasons table: {documented:?}"
        );
    }
    // And every documented one is given: by this crate, or word for word
    // by the broker.
    let broker: String = std::fs::read_dir(format!("{}/../broker/src", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for pattern in &documented {
        assert!(
            code.iter().any(|r| fits(pattern, r)) || broker.contains(&format!("\"{pattern}\"")),
            "{pattern:?} is documented, but no code gives it"
        );
    }
    // The kinds.
    let kinds: Vec<String> = table_after(&text, "### `error`")
        .into_iter()
        .map(|r| r[0].trim_matches('`').to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            ErrorKind::Denied,
            ErrorKind::Failed,
            ErrorKind::Invalid,
            ErrorKind::Unavailable
        ]
        .map(|k| k.name())
    );
}

#[test]
fn the_documented_decoding_rules_hold() {
    use spacer_proto::wire::RequestError::{self, *};
    let (v, op, rooms, spaces) = (
        "a1 76",
        "a2 6f 70",
        "a5 72 6f 6f 6d 73",
        "a6 73 70 61 63 65 73",
    );
    let uts = Ok(Request::rooms(0x0400_0000));
    let cases: Vec<(String, Result<Request, RequestError>)> = vec![
        // Integer widths: any format whose value fits.
        (format!("83 {v} 01 {op} {rooms} {spaces} ce 04 00 00 00"), uts.clone()),
        (format!("83 {v} cc 01 {op} {rooms} {spaces} cf 00 00 00 00 04 00 00 00"), uts.clone()),
        (format!("83 {v} d0 01 {op} {rooms} {spaces} d3 00 00 00 00 04 00 00 00"), uts.clone()),
        (format!("83 {v} 01 {op} {rooms} {spaces} d0 ff"), Err(Malformed)),
        (format!("83 {v} 01 {op} {rooms} {spaces} cb 41 90 00 00 00 00 00 00"), Err(Malformed)),
        (format!("83 {v} 01 {op} {rooms} {spaces} c0"), Err(Malformed)),
        // The version first, whatever else the map holds.
        (format!("84 {v} 02 {op} {rooms} {spaces} 00 a1 78 01"), Err(Version(2))),
        (format!("83 {v} ff {op} {rooms} {spaces} 00"), Err(Malformed)),
        (format!("82 {op} {rooms} {spaces} 00"), Err(Malformed)),
        // Any order; a key twice; an unknown key; a key missing.
        (format!("83 {spaces} ce 04 00 00 00 {op} {rooms} {v} 01"), uts.clone()),
        (format!("84 {v} 01 {v} 01 {op} {rooms} {spaces} ce 04 00 00 00"), Err(Malformed)),
        (format!("84 {v} 01 {op} {rooms} {spaces} ce 04 00 00 00 a1 78 01"), Err(Malformed)),
        // {"v": 1, "op": "ping"} and {"v": 1, "op": "ping", "spaces": 0}
        (format!("82 {v} 01 {op} a4 70 69 6e 67"), Err(Malformed)),
        (format!("83 {v} 01 {op} a4 70 69 6e 67 {spaces} 00"), Err(UnknownOp)),
        // Strings: a bin with UTF-8 is one.
        (format!("83 {v} 01 {op} c4 05 72 6f 6f 6d 73 {spaces} ce 04 00 00 00"), uts.clone()),
        // nil is absent for the optional keys, but not for loopback_up.
        (format!("84 {v} 01 {op} {rooms} {spaces} ce 04 00 00 00 a8 68 6f 73 74 6e 61 6d 65 c0"), uts.clone()),
        (format!("84 {v} 01 {op} {rooms} {spaces} ce 04 00 00 00 a3 6d 61 70 c0"), uts.clone()),
        (format!("84 {v} 01 {op} {rooms} {spaces} ce 40 00 00 00 ab 6c 6f 6f 70 62 61 63 6b 5f 75 70 c0"), Err(Malformed)),
        (format!("84 {v} 01 {op} {rooms} {spaces} ce 40 00 00 00 ab 6c 6f 6f 70 62 61 63 6b 5f 75 70 01"), Err(Malformed)),
        // An offset is exactly two integers.
        (format!("84 {v} 01 {op} {rooms} {spaces} 80 b0 6d 6f 6e 6f 74 6f 6e 69 63 5f 6f 66 66 73 65 74 93 ff 00 00"), Err(Malformed)),
        // Keys that do not go together.
        (format!("84 {v} 01 {op} {rooms} {spaces} ce 04 00 00 00 a3 6d 61 70 a4 61 75 74 6f"), Err(MapOnRooms)),
        // Cut short, or more after the map.
        (format!("83 {v} 01 {op} {rooms} {spaces} ce 04 00"), Err(Malformed)),
        (format!("83 {v} 01 {op} {rooms} {spaces} ce 04 00 00 00 c0"), Err(Trailing)),
        (String::new(), Err(Malformed)),
        (format!("93 01 {rooms} 00"), Err(Malformed)),
    ];
    for (hex, want) in cases {
        assert_eq!(Request::decode(&unhex(&hex)), want, "{hex}");
    }
}
