//! `bulkhead-proto`: the wire formats that cross Bulkhead's trust boundaries.
//!
//! Everything here is pure: no I/O of its own (`qrexec_io` only frames
//! messages over the caller's `Read`/`Write`), no global state, no allocation
//! beyond the size limits each format sets. Bytes handed to these parsers may come from a
//! hostile qube, so every parser returns an error instead of panicking and never
//! reads past the limits defined next to it. Each parser has a `cargo fuzz`
//! target in `fuzz/`.
//!
//! This crate is shared by the host and (later) the guest agent, so it must
//! never depend on a host-only crate. `tests/deps.rs` in the daemon crate checks
//! that with `cargo metadata`.

#![forbid(unsafe_code)]

pub mod admin;
pub mod filecopy;
pub mod mux;
pub mod names;
pub mod qrexec;
pub mod qrexec_io;
pub mod vmexec;
