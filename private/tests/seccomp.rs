//! Private mode's seccomp filters against forbidden calls, by the daemon
//! worker's check (`worker/tests/seccomp_check/mod.rs`). A plain `main` (no
//! test harness).

use spacer_private_worker::Private;

#[path = "../../worker/tests/seccomp_check/mod.rs"]
mod seccomp_check;

fn main() {
    use Private::*;
    seccomp_check::check(&[Worker, Subspace], &[(Subspace, Worker)]);
}
