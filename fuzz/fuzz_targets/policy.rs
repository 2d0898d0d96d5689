//! The policy parser on arbitrary text, and the decision function on what
//! it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spacer_policy::{parse, Op, Peer, Resolver, Usage};
use spacer_proto::{RoomOption, Spaces};

struct Fixed;

impl Resolver for Fixed {
    fn user(&self, name: &str) -> Option<u32> {
        (name == "alice").then_some(1000)
    }
    fn group(&self, name: &str) -> Option<u32> {
        (name == "dev").then_some(500)
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse("fuzz.toml", text, &Fixed, 65534) {
        Ok(pol) => {
            let _ = pol.warnings();
            for uid in [0, 1000, 65534] {
                let peer = Peer { uid, gid: 500, groups: &[500, 7] };
                let _ = pol.decide(&peer, Op::Rooms, Spaces::NET | Spaces::UTS, &[RoomOption::Loopback, RoomOption::Hostname], &Usage::default());
                let _ = pol.decide(&peer, Op::Subspace, Spaces::USER, &[], &Usage { requests_last_minute: 3, live_subspaces: 2, depth: 1, live_rooms: [1, 0, 2, 64, 0, 3] });
            }
        }
        Err(diag) => {
            // Every error points into the text.
            assert!(diag.line >= 1 && diag.column >= 1);
            let _ = diag.to_string();
        }
    }
});
