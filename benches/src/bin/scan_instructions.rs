//! `scan_instructions`: N scans through the in-process scan path, for an
//! instruction count that the noise of a shared machine cannot move
//! (`scripts/instructions.sh` runs it under `valgrind --tool=callgrind`).
//!
//! One mode a run, so that each count is of one thing:
//!
//! - `bare`: decode each code and check it with ed25519-dalek's
//!   `verify_strict`, one by one: the verification ceiling (`bare_verify`'s
//!   work without HTTP);
//! - `one`: `Gateway::scan_nowait` on each code, one by one (decode, the
//!   gateway's strict single check, rules, holder state, metrics);
//! - `batch`: `Gateway::scan_many_nowait` on batches of `--batch` codes
//!   (the same, with the signatures of a batch checked together, as the
//!   verifier stage does).
//!
//! The scans are of distinct green holders with fresh codes, all entering
//! a metro checkpoint, so each passes; the run fails if one does not. The
//! counted part is the function `measured` only (setup, signing and the
//! demo population are outside it): callgrind's `--toggle-collect` names it.
//! No log is attached (the durability path is not what batching changes).
//! Outside valgrind it also prints scans per core-second (one thread), the
//! in-process form of the end-to-end ratio.
//!
//! `cargo run --release -p healthgate-benches --bin scan_instructions -- --mode batch --scans 512 --batch 64`

use anyhow::{bail, ensure, Context};
use clap::{Parser, ValueEnum};
use healthgate::clock::{Clock, ManualClock, SystemClock};
use healthgate::durability::state_file;
use healthgate::gateway::{Gateway, ScanRequest};
use healthgate::operations::config::Config;
use healthgate::operations::demo::DemoOptions;
use healthgate::policy::Direction;
use healthgate::token::{Claims, RawToken};
use healthgate::Color;
use std::hint::black_box;
use std::sync::Arc;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Bare,
    One,
    Batch,
}

#[derive(Parser)]
#[command(about = "N scans through the in-process scan path, for instruction counts")]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    /// Scans to run (distinct green holders).
    #[arg(long, default_value_t = 512)]
    scans: usize,
    /// Codes per batch in `batch` mode.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Holders in the demo population.
    #[arg(long, default_value_t = 4000)]
    size: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.batch >= 1, "--batch must be at least 1");
    let dir = tempfile::tempdir()?;
    let now = SystemClock.now();
    let opts = DemoOptions { size: args.size, seed: 1, ..Default::default() };
    let env = healthgate::operations::demo::prepare(dir.path(), &opts, "127.0.0.1:0", "127.0.0.1:0", now)?;
    let config = Config::load(&env.config)?;
    let gw = healthgate::serving::server::build(&config, Arc::new(ManualClock::new(now)))?;
    state_file::load(&env.state, gw.store())?;
    gw.set_loaded();
    let (kid, key) = healthgate::operations::keyfiles::read_secret(&env.issuer_key)?;
    let codes: Vec<String> = (0..args.size)
        .filter(|&i| env.population.color(i) == Color::Green)
        .take(args.scans)
        .map(|i| {
            let holder = env.population.holder(i);
            Claims { kid, holder, issued_at: now, expires_at: now + 3600, color: Color::Green, serial: i }.sign(&key)
        })
        .collect::<Result<_, _>>()
        .context("signing codes")?;
    if codes.len() < args.scans {
        bail!("only {} green holders in a population of {}; raise --size", codes.len(), args.size);
    }
    let checkpoint = env.checkpoints["metro"][0].clone();
    let requests: Vec<ScanRequest<'_>> = codes
        .iter()
        .map(|code| ScanRequest { code, checkpoint: &checkpoint, direction: Direction::In, temperature_c: None })
        .collect();
    let started = thread_cpu_seconds();
    let passed = measured(args.mode, args.batch, &gw, &requests, &key.verifying_key());
    let cpu = thread_cpu_seconds() - started;
    ensure!(passed == args.scans, "{passed} of {} scans passed", args.scans);
    // The scans run on this thread alone, so its CPU time (not the wall
    // clock, which a shared machine stretches) gives scans per core-second;
    // meaningless under valgrind, where the count is the figure.
    println!("{passed} scans passed in {cpu:.4} CPU-s: {:.0} scans per core-second", passed as f64 / cpu);
    Ok(())
}

/// The counted part: every scan, in the chosen mode; returns how many passed.
#[inline(never)]
fn measured(
    mode: Mode,
    batch: usize,
    gw: &Gateway,
    requests: &[ScanRequest<'_>],
    key: &ed25519_dalek::VerifyingKey,
) -> usize {
    match mode {
        Mode::Bare => requests
            .iter()
            .filter(|r| {
                RawToken::decode(black_box(r.code))
                    .is_ok_and(|t| key.verify_strict(&t.signing_input(), &t.signature()).is_ok())
            })
            .count(),
        Mode::One => {
            let live = gw.live();
            requests.iter().filter(|r| gw.scan_nowait(&live, black_box(r)).is_ok_and(|(o, _)| o.decision.pass)).count()
        }
        Mode::Batch => {
            let live = gw.live();
            requests
                .chunks(batch)
                .map(|chunk| {
                    gw.scan_many_nowait(&live, black_box(chunk))
                        .into_iter()
                        .filter(|r| r.as_ref().is_ok_and(|(o, _)| o.decision.pass))
                        .count()
                })
                .sum()
        }
    }
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_seconds() -> f64 {
    healthgate_benches::thread_cpu().as_secs_f64()
}
