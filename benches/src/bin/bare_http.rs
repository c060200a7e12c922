//! `bare_http`: the HTTP ceiling. Answers every request with a fixed scan
//! decision and does nothing else, so `healthgate-loadgen --no-check` and
//! `wrk` can measure what hyper on this machine serves at most.
//!
//! `cargo run --release -p healthgate-benches --bin bare_http -- --addr 127.0.0.1:0`

mod bare;

use bytes::Bytes;
use clap::Parser;
use hyper::StatusCode;

/// The answer to everything: a green pass, shaped like the gateway's.
const BODY: &str = r#"{"decision":"pass","color":"green","reason":"ok","holder":"0000…0000","epoch":1}"#;

#[derive(Parser)]
#[command(about = "Fixed-answer HTTP/1.1 server: the HTTP ceiling for the scan benchmark")]
struct Args {
    /// Address to bind; port 0 picks one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8081")]
    addr: String,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bare::serve(&args.addr, args.threads, |_body| bare::json(StatusCode::OK, Bytes::from_static(BODY.as_bytes())))
}
