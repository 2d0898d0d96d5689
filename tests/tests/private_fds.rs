//! Private mode leaks no fd in the test process: the only test in this
//! binary, so nothing else opens fds meanwhile.

use spacer_client::{run_in, Client, CommandExt, Join, Spaces};
use spacer_tests::*;

#[test]
fn two_hundred_rounds_leak_no_fd() {
    need_root();
    let me = std::process::id() as i32;
    let round = || {
        let spacer = Client::private().unwrap();
        let rooms = spacer.rooms(Spaces::NET | Spaces::UTS).unwrap();
        assert!(run_in(&rooms, || true).unwrap());
        let (inside, sub) = spacer.subspace(Spaces::USER | Spaces::PID).unwrap();
        // Rooms to join after the user namespace must be made inside it.
        let inner = inside.rooms(Spaces::NET | Spaces::MNT).unwrap();
        let st = std::process::Command::new("true")
            .join(Join::new().subspace(&sub).unwrap().rooms(&inner).unwrap())
            .status()
            .unwrap();
        assert!(st.success());
    };
    round();
    let base = fd_count(me);
    for _ in 0..200 {
        round();
    }
    assert_eq!(fd_count(me), base, "{:?}", fd_links(me));
}
