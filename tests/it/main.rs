//! All end-to-end tests, one binary (see the harness in `tests/src`).
//! Each module is named after the part of the product it guards.

mod admission;
mod architecture;
mod authority;
mod batch;
mod cli;
mod cluster;
mod cluster_faults;
mod contract;
mod durability;
mod errors;
mod formats;
mod inspect;
mod killloop;
mod limits;
mod manners;
mod metrics;
mod monitoring;
mod package;
mod rules;
mod server;
mod shadow;
mod tls;
