//! # spacer-core
//!
//! What every process of spacer shares, and all of ours that the root-run
//! `spacer-worker` links (the client-facing wire format is in
//! `spacer-proto`, which re-exports this crate; the worker does not link it).
//!
//! * [`internal`]: broker ↔ worker messages, separate types that never
//!   appear on a client connection.
//! * [`Channel`]: `AF_UNIX` `SOCK_SEQPACKET` I/O with fds in `SCM_RIGHTS`,
//!   hard caps on size and fd count, `MSG_TRUNC`/`MSG_CTRUNC` as errors.
//! * [`ns`] and [`fd`]: namespace types and fd kind checks.
//! * [`idmap`]: the id maps a subspace's user namespace may have.
//! * [`options`]: what a `Rooms` request may ask the worker to do in the
//!   new namespaces (loopback up, host name, clock offsets), validated here
//!   for every side.
//! * [`launch`]: a worker's command line, written and read.
//!
//! Trust level: used on both sides of every trust boundary, and linked into
//! the privileged worker (its lines count in the worker's budget, `cargo
//! xtask lines`); it parses untrusted bytes and must never panic on them
//! (property-tested).

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

pub use channel::{Channel, MessageError, PeerCredentials, Received, RecvError, Sender};
pub use idmap::{Extent, IdMaps, MapChoice};
pub use ns::{check_spaces, NsType, SpaceError, Spaces};
pub use options::{Offset, OptionError, RoomOption, RoomOptions};
