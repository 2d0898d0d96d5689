//! `SIGHUP`: the policy re-read off the event loop and swapped in whole;
//! an invalid file keeps the old one.

use std::rc::Rc;

use spacer_broker::cli::Args;

use crate::ctx::Ctx;
use crate::listen::Notifier;
use crate::policy_file;

/// Re-reads the policy on a blocking thread (name lookups may be slow and
/// must not stall the event loop), then swaps it in; an invalid file keeps
/// the old one.
pub fn reload(ctx: &Rc<Ctx>, args: &Args, notifier: &Rc<Notifier>) {
    notifier.reloading();
    let path = args.policy.clone();
    let caps = policy_file::broker_caps(args);
    let ctx = ctx.clone();
    let notifier = notifier.clone();
    tokio::task::spawn_local(async move {
        let loaded =
            tokio::task::spawn_blocking(move || policy_file::load(path.as_deref(), &caps)).await;
        match loaded {
            Ok(Ok(p)) => {
                tracing::info!(target: "spacer::event", event = "policy_reloaded", policy = p.source(), policy_sha256 = p.digest(), "policy reloaded");
                *ctx.policy.borrow_mut() = Rc::new(p);
            }
            Ok(Err(e)) => {
                let old = ctx.policy.borrow();
                tracing::error!(target: "spacer::event", event = "policy_reload_failed", error = %e, policy = old.source(), policy_sha256 = old.digest(), "policy reload failed; keeping the old policy");
            }
            Err(e) => {
                tracing::error!(target: "spacer::event", event = "policy_reload_failed", error = %e, "policy reload failed; keeping the old policy");
            }
        }
        notifier.notify("READY=1");
    });
}
