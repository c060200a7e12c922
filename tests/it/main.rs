//! All end-to-end tests, one binary (see the harness in `tests/src`).
//! Each module is named after the part of the product it guards.

mod architecture;
mod authority;
mod cli;
mod cluster;
mod durability;
mod errors;
mod formats;
mod inspect;
mod killloop;
mod rules;
mod server;
mod shadow;
