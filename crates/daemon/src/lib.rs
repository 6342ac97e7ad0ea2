//! `bulkheadd`: the Bulkhead host daemon.
//!
//! It owns every qube's definition (the domain model in [`model`]), persists
//! it durably ([`store`]), and answers the Qubes Admin API on a unix socket
//! ([`server`]) through one typed command model ([`api`]).
//!
//! It must never parse guest data that a less privileged per-qube process
//! could parse instead, never run user applications, and never hold state that
//! is not either persisted before acknowledgement or rebuilt at start.

#![forbid(unsafe_code)]

pub mod api;
pub mod dom0rpc;
pub mod error;
pub mod lifecycle;
pub mod model;
pub mod ops;
pub mod qrexec;
pub mod server;
pub mod storage;
pub mod store;
pub mod sys;
