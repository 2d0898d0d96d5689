//! `spacer-worker`: see the crate's library ([`spacer_worker`]).

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    spacer_worker::main()
}
