//! The daemon's worker roles' seccomp filters against forbidden calls
//! (`seccomp_check/mod.rs`). A plain `main` (no test harness).

use spacer_worker::Role;

mod seccomp_check;

fn main() {
    use Role::*;
    seccomp_check::check(
        &[Supervisor, Rooms, Spawner, HostSubspace],
        &[
            (Rooms, Supervisor),
            (Spawner, Supervisor),
            (HostSubspace, Spawner),
        ],
    );
}
