//! healthgate-loadgen: an open-loop load generator for the healthgate scan
//! API, with commuter-peak profiles and a check of every answer.
//!
//! # Layout
//!
//! - [`schedule`]: the one [`Schedule`] type behind constant rates, ramps and
//!   commuter profiles; it yields intended send instants.
//! - [`cases`]: the case mix and the model of holder state that says what
//!   each request must get back; signs a fresh token per request.
//! - [`expect`]: expectations and the check of each answer.
//! - [`client`]: the driver (producer thread, worker threads that each
//!   pace and serve their share of the HTTP/1.1 keep-alive connections,
//!   one per virtual turnstile).
//! - [`report`]: HDR histograms from the intended send time, the progress
//!   line and the summary.
//! - [`target`]: the demo's `env.json` and endpoints.
//! - [`wire`]: the HTTP/1.1 client of one connection: requests formatted
//!   into reused buffers, answers parsed in place, no task per connection.
//!
//! # Invariants
//!
//! - Open loop: when a request is sent depends only on the schedule, never
//!   on answers. Latency is measured from the intended send time.
//! - All requests for one holder travel over one connection, in the order
//!   generated, so the state model's expectations hold.
//! - Token signing happens on the producer thread, ahead of the schedule.

pub mod cases;
pub mod client;
pub mod expect;
pub mod report;
pub mod schedule;
pub mod target;
pub mod wire;

pub use cases::{Api, CaseMix, Generator, World};
pub use client::{run, Settings};
pub use report::Summary;
pub use schedule::Schedule;
