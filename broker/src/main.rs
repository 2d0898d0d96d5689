//! # spacer-broker
//!
//! The unprivileged front of spacer. Trust level: **parses untrusted
//! input** from every local user, but holds no capability: started as root,
//! it creates its socket and starts `spacer-worker` (the privileged half),
//! then drops to `--user` (no capabilities in any set, no_new_privs,
//! non-dumpable) before it reads a single client byte. It identifies peers
//! by the kernel (`SO_PEERCRED`, `SO_PEERGROUPS`, `SO_PEERPIDFD`), applies
//! the policy, writes one audit record per request, and relays the worker's
//! namespace fds. One thread, one event loop: a slow client never blocks
//! another.

#![deny(unsafe_code)]

mod accept;
mod achan;
mod audit;
mod authorize;
mod closer;
mod conn;
mod ctx;
mod dispatch;
mod journal;
mod listen;
mod peer;
mod pipeline;
mod policy_file;
mod pool;
mod privs;
mod record;
mod relay;
mod reload;
mod request;
mod rooms;
mod service;
mod startup;
mod subids;
mod subspace;
mod supervisor;
#[allow(unsafe_code)]
mod sys;
mod tenants;
mod usage;
mod worker_stderr;

use std::process::ExitCode;

use clap::Parser;

use spacer_broker::cli::Args;

use crate::startup::StartError;

fn main() -> ExitCode {
    let _ = startup::handled_signals().thread_block();
    let args = Args::parse();
    let health = audit::init(args.log_format, &args.journal_socket);
    match run(args, health) {
        Ok(code) => code,
        Err(e) => {
            let mut chain = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                chain.push_str(": ");
                chain.push_str(&s.to_string());
                src = s.source();
            }
            tracing::error!(target: "spacer::event", event = "fatal", error = %chain, "cannot start");
            ExitCode::FAILURE
        }
    }
}

/// Starts as root, drops privileges, then serves on one thread.
fn run(args: Args, health: audit::Health) -> Result<ExitCode, StartError> {
    let service = startup::start(args, health)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let local = tokio::task::LocalSet::new();
    Ok(local.block_on(&runtime, service::serve(service)))
}
