//! # spacer-proto
//!
//! The wire format of spacer and the one type that carries it.
//!
//! * [`wire`]: the client-facing protocol (requests, responses, and the
//!   decoder that checks every received fd), documented in
//!   `docs/PROTOCOL.md`. Only this module is this crate's own.
//! * Everything else comes from `spacer-core` (re-exported here under the
//!   same paths): [`internal`] (broker ↔ worker messages), [`Channel`],
//!   [`ns`] and [`fd`], [`idmap`], [`options`], [`launch`]. The privileged
//!   worker links `spacer-core` alone, never the client wire format.
//!
//! Trust level: used on both sides of every trust boundary; it parses
//! untrusted bytes and must never panic on them (property-tested).

#![deny(unsafe_code)]

pub mod wire;

pub use spacer_core::{channel, fd, idmap, internal, launch, ns, options};
pub use spacer_core::{check_spaces, NsType, SpaceError, Spaces};
pub use spacer_core::{Channel, MessageError, PeerCredentials, Received, RecvError, Sender};
pub use spacer_core::{Extent, IdMaps, MapChoice};
pub use spacer_core::{Offset, OptionError, RoomOption, RoomOptions};
