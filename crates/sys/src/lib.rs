//! `bulkhead-sys`: the only crate in Bulkhead that contains `unsafe`.
//!
//! It wraps the few Linux system calls that `nix` does not cover (the new
//! mount API for idmapped mounts, loop device setup, pidfds) and `fork`, whose precondition (a
//! single-threaded caller) it checks at run time. Every `unsafe` block carries
//! a `SAFETY:` comment naming the invariant it relies on.
//!
//! It must never grow policy: callers decide what to mount where; this crate
//! only makes the calls safe to express.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod cpu;
pub mod fdpass;
pub mod fs;
pub mod loopdev;
pub mod mount;
pub mod net;
pub mod process;
#[cfg(feature = "seccomp")]
pub mod seccomp;
