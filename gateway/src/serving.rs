//! Serving: the HTTP layer (listeners, connection limits, routing, the one
//! place errors become statuses), the inspector's page and its QR decoder,
//! and the server's run loop. The only part of the server that knows hyper.

pub mod http;
pub mod inspect;
pub mod server;
