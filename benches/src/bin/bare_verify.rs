//! `bare_verify`: the verification ceiling. Like `bare_http`, but every
//! request's body is parsed as a scan, its `code` decoded and its signature
//! checked once with ed25519-dalek's `verify_strict` against one issuer key:
//! the least work a gateway that verifies one code at a time does per scan,
//! with no state, rules or metrics. (The gateway's own rules, which batch
//! verification shares, are in `healthgate::signature`; one by one they
//! cost the same as `verify_strict`.)
//!
//! `cargo run --release -p healthgate-benches --bin bare_verify -- --addr 127.0.0.1:0 --key DIR/keys/hubei.key`

mod bare;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use ed25519_dalek::VerifyingKey;
use healthgate::keyfile::parse_public_hex;
use healthgate::operations::keyfiles::{read_public, read_secret};
use healthgate::token::RawToken;
use hyper::StatusCode;
use serde::Deserialize;
use std::path::PathBuf;

const PASS: &str = r#"{"decision":"pass","color":"green","reason":"ok","holder":"0000…0000","epoch":1}"#;
const MALFORMED: &str = r#"{"decision":"deny","color":"unknown","reason":"malformed","holder":null,"epoch":1}"#;
const BAD_SIGNATURE: &str =
    r#"{"decision":"deny","color":"unknown","reason":"bad_signature","holder":"0000…0000","epoch":1}"#;

#[derive(Parser)]
#[command(about = "Scan server that only verifies the token: the verification ceiling")]
struct Args {
    /// Address to bind; port 0 picks one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8082")]
    addr: String,
    /// The issuer's public key, 64 hex digits.
    #[arg(long, conflicts_with = "key")]
    trust_pub_hex: Option<String>,
    /// The issuer's key file: `.pub`, or `.key` (only its public half is used).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Deserialize)]
struct Scan<'a> {
    code: &'a str,
}

fn key(args: &Args) -> anyhow::Result<VerifyingKey> {
    match (&args.trust_pub_hex, &args.key) {
        (Some(hex), _) => parse_public_hex(hex).map_err(anyhow::Error::msg),
        (None, Some(path)) => match read_public(path) {
            Ok((_, k)) => Ok(k),
            Err(_) => Ok(read_secret(path).with_context(|| format!("reading {}", path.display()))?.1.verifying_key()),
        },
        (None, None) => bail!("pass --trust-pub-hex or --key"),
    }
}

fn answer(key: &VerifyingKey, body: &[u8]) -> hyper::Response<http_body_util::Full<Bytes>> {
    let Ok(scan) = serde_json::from_slice::<Scan>(body) else {
        return bare::json(StatusCode::BAD_REQUEST, Bytes::from_static(br#"{"error":"body is not a scan"}"#));
    };
    let body = match RawToken::decode(scan.code) {
        Err(_) => MALFORMED,
        Ok(token) => match key.verify_strict(&token.signing_input(), &token.signature()) {
            Ok(()) => PASS,
            Err(_) => BAD_SIGNATURE,
        },
    };
    bare::json(StatusCode::OK, Bytes::from_static(body.as_bytes()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let key = key(&args)?;
    bare::serve(&args.addr, args.threads, move |body| answer(&key, body))
}
