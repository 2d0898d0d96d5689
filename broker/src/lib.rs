//! # spacer-broker (library part)
//!
//! Only the command line lives here, so that a build step can generate the
//! manual page and shell completions from it; the broker itself is the
//! `spacer-broker` binary (see its crate docs).

#![forbid(unsafe_code)]

pub mod cli;
