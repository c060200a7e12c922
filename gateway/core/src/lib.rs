//! healthgate-core: the decision core of healthgate, with no I/O and no
//! locks. Cargo enforces it: this crate depends on neither tokio, hyper,
//! redb nor prometheus, and nothing here reads a file, a socket or the
//! system's randomness. The server (`healthgate`), the load generator and
//! the benches build on it.
//!
//! # Layout
//!
//! - [`token`]: token format v1 (docs/TOKEN.md): strict decode, sign, signature and time checks.
//! - [`trust`]: the trust list of issuers and their keys, parsed from text.
//! - [`keyfile`]: the key-file format (docs/KEYS.md), as bytes in and out.
//! - [`signature`]: Ed25519 checks under one rule set, one by one and in batches (identical verdicts).
//! - [`verify`]: the one verification path: decoded token(s) → `VerifiedToken` or a `Reason`, one or a batch.
//! - [`policy`]: the rules as one pure function, `decide`, over a `VerifiedToken`.
//! - [`state`]: per-holder state as data (compact state, timed steps, effective colour).
//! - [`merge`]: how replicas merge a holder's effects in any order (docs/CLUSTER.md).
//! - [`feed`]: the authority's signed batches: wire types and canonical signing input.
//! - [`revocation`]: the revocation set behind a Bloom filter, and the filter's export codec.
//! - [`codec`]: stable one-byte codes of the enums written to disk.
//! - [`population`]: deterministic synthetic populations (seed, demo, load generator).
//! - [`clock`], [`color`], [`holder`]: small shared types.

pub mod clock;
pub mod codec;
pub mod color;
pub mod feed;
pub mod holder;
pub mod keyfile;
pub mod merge;
pub mod policy;
pub mod population;
pub mod revocation;
pub mod signature;
pub mod state;
pub mod token;
pub mod trust;
pub mod verify;

pub use clock::{Clock, ManualClock, SystemClock, UnixSecs};
pub use color::Color;
pub use holder::HolderId;
