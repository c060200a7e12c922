//! healthgate: a verification gateway for signed health codes.
//!
//! # Layout
//!
//! - [`token`]: token format v1 (docs/TOKEN.md): decode, sign, verify.
//! - [`trust`]: the trust list of issuers and their keys.
//! - [`keys`]: key files on disk.
//! - [`clock`], [`color`], [`holder`]: small shared types.

pub mod auth;
pub mod client;
pub mod clock;
pub mod color;
pub mod config;
pub mod demo;
pub mod feed;
pub mod holder;
pub mod http;
pub mod inspect;
pub mod keys;
pub mod metrics;
pub mod persist;
pub mod policy;
pub mod population;
pub mod revocation;
pub mod server;
pub mod service;
pub mod state;
pub mod token;
pub mod trust;
pub mod visits;
pub mod wal;

pub use clock::{Clock, ManualClock, SystemClock, UnixSecs};
pub use color::Color;
pub use holder::HolderId;
