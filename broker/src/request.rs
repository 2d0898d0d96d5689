//! Step one of a request: decode it and check it for itself, before any
//! policy: the types its operation can make, and whether its id map choice
//! and options fit what it asks for.

use spacer_policy::Op;
use spacer_proto::wire::{Request, RequestError};
use spacer_proto::{check_spaces, MapChoice, OptionError, RoomOptions, SpaceError, Spaces};

use crate::record::{self, AuditRecord};

/// A request that makes sense on its own.
#[derive(Debug)]
pub struct Valid {
    /// Rooms or a subspace.
    pub op: Op,
    /// The types asked for (within what `op` can make, at least one).
    pub spaces: Spaces,
    /// Room options (none for a subspace).
    pub options: RoomOptions,
    /// A subspace's id map choice (`Root` for rooms).
    pub map: MapChoice,
}

/// Why a request is invalid. The texts are the reasons clients get.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// The datagram is not a request of this protocol.
    #[error(transparent)]
    Decode(#[from] RequestError),
    /// No type, or one its operation cannot make.
    #[error(transparent)]
    Spaces(#[from] SpaceError),
    /// An id map without a new user namespace.
    #[error("map is for a new user namespace: ask for user")]
    MapWithoutUser,
    /// An id map for a nested subspace.
    #[error("map is for first-level subspaces only (a nested one maps its parent's ids)")]
    NestedMap,
    /// Options that do not fit the types asked for.
    #[error(transparent)]
    Options(#[from] OptionError),
}

/// Decodes and checks one request on a connection at `depth`, recording
/// what it asks for before anything is checked: a refused request is
/// audited with everything it asked for.
pub fn validate(bytes: &[u8], depth: u32, record: &mut AuditRecord) -> Result<Valid, Invalid> {
    let req = Request::decode(bytes)?;
    let raw_spaces = req.spaces();
    let (op, can_make, options, map) = match req {
        Request::Rooms { options, .. } => (Op::Rooms, Spaces::ROOMS, options, MapChoice::Root),
        Request::Subspace { map, .. } => {
            (Op::Subspace, Spaces::SUBSPACE, RoomOptions::default(), map)
        }
    };
    record.request = op.into();
    record.spaces = Spaces::from_bits_truncate(raw_spaces).names();
    record.options = record::options(&options);
    record.map = (map != MapChoice::Root).then_some(map.name());
    let spaces = check_spaces(raw_spaces, can_make)?;
    if map != MapChoice::Root && !spaces.contains(Spaces::USER) {
        return Err(Invalid::MapWithoutUser);
    }
    if map != MapChoice::Root && depth > 0 {
        return Err(Invalid::NestedMap);
    }
    options.check(spaces)?;
    Ok(Valid {
        op,
        spaces,
        options,
        map,
    })
}
