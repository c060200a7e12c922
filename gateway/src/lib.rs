//! healthgate: a verification gateway for signed health codes. The server
//! crate: everything that does I/O or takes a lock. The pure decision core
//! (token, trust list, rules, feed wire types, revocations) is the
//! `healthgate-core` crate, re-exported here under its module names.
//!
//! # Layout
//!
//! - [`cluster`]: replicas sharing state through NATS JetStream (docs/CLUSTER.md).
//! - [`gateway`]: the `Gateway` and its parts: live state, scans and check-ins, the authority feed, effects.
//! - [`store`]: the concurrent colour store (the holder table: per-holder state under its shard's lock).
//! - [`serving`]: HTTP: listeners, routing, API keys, the server's run loop.
//! - [`durability`]: the write-ahead log, the state file, the tracing index, recovery and housekeeping.
//! - [`operations`]: configuration, metrics, key files, the demo, the CLI's HTTP client.
//! - re-exported from `healthgate-core`: [`token`], [`trust`], [`keyfile`], [`signature`], [`verify`], [`policy`],
//!   [`state`], [`feed`], [`revocation`], [`codec`], [`population`], [`clock`], [`color`], [`holder`].

pub mod cluster;
pub mod durability;
pub mod gateway;
pub mod operations;
pub mod serving;
pub mod store;

pub use healthgate_core::{
    clock, codec, color, feed, holder, keyfile, policy, population, revocation, signature, state, token, trust, verify,
};
pub use healthgate_core::{Clock, Color, HolderId, ManualClock, SystemClock, UnixSecs};
