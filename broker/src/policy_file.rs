//! Which policy the broker serves: the file it reads at start and on
//! `SIGHUP`, with the broker's per-uid caps where the policy sets none.

use std::path::Path;

use spacer_broker::cli::Args;
use spacer_policy::{FileCheck, Limits, Policy, SystemResolver};

/// `--policy`, else the default file if it exists, else the embedded
/// default; with the broker's per-uid caps where the policy sets none.
pub fn load(explicit: Option<&Path>, caps: &Limits) -> Result<Policy, spacer_policy::LoadError> {
    let default = Path::new(spacer_policy::DEFAULT_PATH);
    let policy = match explicit {
        Some(p) => spacer_policy::load_file(p, FileCheck::Strict, &SystemResolver)?,
        None if default.exists() => {
            spacer_policy::load_file(default, FileCheck::Strict, &SystemResolver)?
        }
        None => spacer_policy::embedded_default(),
    };
    Ok(policy.with_default_limits(caps))
}

/// The per-uid caps the broker applies where the policy sets none.
pub fn broker_caps(args: &Args) -> Limits {
    Limits {
        max_connections: Some(args.max_connections_per_uid),
        max_subspaces: Some(args.max_subspaces_per_uid),
        max_rooms: Some(args.max_rooms_per_uid),
        ..Limits::default()
    }
}
