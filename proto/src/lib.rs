//! # spacer-proto
//!
//! The wire format of spacer and the one type that carries it.
//!
//! * [`wire`]: the client-facing protocol (requests, responses, and the
//!   decoder that checks every received fd), documented in
//!   `docs/PROTOCOL.md`.
//! * [`internal`]: broker ↔ worker messages, separate types that never
//!   appear on a client connection.
//! * [`Channel`]: `AF_UNIX` `SOCK_SEQPACKET` I/O with fds in `SCM_RIGHTS`,
//!   hard caps on size and fd count, `MSG_TRUNC`/`MSG_CTRUNC` as errors.
//! * [`ns`] and [`fd`]: namespace types and fd kind checks.
//! * [`idmap`]: the id maps a subspace's user namespace may have.
//! * [`options`]: what a `Rooms` request may ask the worker to do in the
//!   new namespaces (loopback up, host name, clock offsets), validated here
//!   for every side.
//!
//! Trust level: used on both sides of every trust boundary; it parses
//! untrusted bytes and must never panic on them (property-tested).

#![deny(unsafe_code)]

pub mod channel;
pub mod fd;
pub mod idmap;
pub mod internal;
pub mod launch;
pub mod ns;
pub mod options;
#[allow(unsafe_code)]
mod sys;
pub mod wire;

pub use channel::{Channel, MessageError, PeerCredentials, Received, RecvError, Sender};
pub use idmap::{Extent, IdMaps, MapChoice};
pub use ns::{check_spaces, NsType, SpaceError, Spaces};
pub use options::{Offset, OptionError, RoomOption, RoomOptions};
