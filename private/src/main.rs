//! `spacer-private-worker`: see the crate's library ([`spacer_private_worker`]).

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    spacer_private_worker::main()
}
