//! `healthgate-loadgen`: flags in, validated settings, one run, a summary out.
//!
//! Exit codes: 0 the run passed; 1 a mismatch, or more errors than
//! `--max-errors`; 2 the run could not start (e.g. nothing listening);
//! 64 bad flags or configuration.

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Parser, ValueEnum};
use ed25519_dalek::SigningKey;
use healthgate_core::population::{Mix, Population};
use healthgate_core::token::KeyId;
use healthgate_loadgen::schedule::{parse_duration, parse_ramp, Profile, Step};
use healthgate_loadgen::target::{load_key, Endpoint, Env};
use healthgate_loadgen::{Api, CaseMix, Generator, Schedule, Settings, World};
use hyper::header::HeaderValue;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Population used when neither `--env` nor `--seed/--size/--mix` says.
const DEFAULT_POPULATION: Population =
    Population { seed: 1, size: 100_000, mix: Mix { green: 0.95, yellow: 0.03, red: 0.01, pending: 0.01 } };

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TargetApi {
    /// `POST /v1/scan` with the turnstile key.
    Scan,
    /// `GET /v1/holders/{id}` with the inspector key; any 200 is right.
    Lookup,
}

/// Open-loop load generator for the healthgate scan API.
///
/// Sends at the instants a schedule asks for, whatever the answers are
/// doing, measures latency from those instants, and checks every answer
/// against what the gateway's rules say it must be.
#[derive(Debug, Parser)]
#[command(
    name = "healthgate-loadgen",
    version,
    after_help = "Exit codes: 0 passed; 1 mismatches or too many \
    errors; 2 could not run; 64 bad flags."
)]
#[command(group(ArgGroup::new("schedule").required(true).args(["rate", "ramp", "profile"])))]
struct Args {
    /// A demo's env.json: URL, API keys, issuer key, checkpoints, population.
    #[arg(long, value_name = "FILE")]
    env: Option<PathBuf>,
    /// Base URL of the gateway's public API (overrides env.json). Several
    /// replicas of one deployment: repeat it or give a comma list; the
    /// connections are spread over them, each holder staying on one, and
    /// every answer is still checked.
    #[arg(long, value_delimiter = ',')]
    url: Vec<String>,
    /// API key (default: env.json's turnstile or inspector key).
    #[arg(long)]
    api_key: Option<String>,
    /// PEM file of the CA that signed an https gateway's certificate
    /// (default: env.json's `ca_cert`, written by `healthgate demo --tls`).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Secret key file of the trusted issuer that signs the codes.
    #[arg(long, value_name = "FILE")]
    issuer_key: Option<PathBuf>,
    /// Secret key file whose kid the target does not trust (default: a
    /// generated key with kid ZZ99).
    #[arg(long, value_name = "FILE")]
    untrusted_key: Option<PathBuf>,
    /// Checkpoint id to scan at, repeatable (default: env.json's metro ones).
    #[arg(long = "checkpoint", value_name = "ID")]
    checkpoints: Vec<String>,
    /// Population seed (default: env.json's, else 1); seed, size and mix
    /// must be those the target loaded.
    #[arg(long)]
    seed: Option<u64>,
    /// Population size (default: env.json's, else 100000).
    #[arg(long)]
    size: Option<u64>,
    /// Population colour mix (default: env.json's, else 0.95/0.03/0.01/0.01).
    #[arg(long, value_name = "green=F,yellow=F,red=F,pending=F")]
    mix: Option<Mix>,

    /// Which API to drive.
    #[arg(long, value_enum, default_value = "scan")]
    target: TargetApi,

    /// Constant rate in requests per second (with --duration).
    #[arg(long, requires = "duration")]
    rate: Option<f64>,
    /// How long the constant rate lasts (10s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Step ramp FROM..TO requests per second (with --step, --step-duration).
    #[arg(long, value_name = "FROM..TO", requires_all = ["step", "step_duration"])]
    ramp: Option<String>,
    /// Ramp increment (500) or factor (x1.5).
    #[arg(long)]
    step: Option<Step>,
    /// How long each ramp step lasts.
    #[arg(long, value_parser = parse_duration)]
    step_duration: Option<Duration>,
    /// Commuter profile: morning-peak (2.5 h of real time: see --compress).
    #[arg(long)]
    profile: Option<Profile>,
    /// Make the schedule this many times shorter at the same rates.
    #[arg(long, default_value_t = 1.0)]
    compress: f64,
    /// Multiply every rate of the schedule.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// The p99 target whose breaking point a ramp reports.
    #[arg(long, value_parser = parse_duration, default_value = "5ms")]
    slo_p99: Duration,

    /// Virtual turnstiles: HTTP/1.1 keep-alive connections, one request in flight each.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Worker threads, each pacing and serving its share of the connections
    /// on its own event loop (default: one per CPU). Signing runs on one more.
    #[arg(long)]
    threads: Option<usize>,
    /// Give up on an exchange after this long (counts as a timeout error).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    timeout: Duration,
    /// Requests dispatched and not yet answered beyond which new ones are
    /// dropped as overflow errors (bounds memory when the target falls behind).
    #[arg(long, default_value_t = 200_000)]
    max_backlog: usize,
    /// The pacing tick: each worker thread wakes at most this often and
    /// sends every request of its share due by then together. Fewer
    /// wake-ups cost less CPU; a send may leave up to a tick after its
    /// instant, and latency counts that.
    #[arg(long, value_parser = parse_duration, default_value = "100us")]
    tick: Duration,
    /// Requests prepared (tokens signed) ahead of their instant; the run
    /// starts once this many are ready. At least the run's count means no
    /// signing competes with the target during the run (~350 bytes each).
    #[arg(long, default_value_t = healthgate_loadgen::client::AHEAD)]
    sign_ahead: usize,
    /// Case weights, e.g. green=0.9,yellow=0.02,fever=0.01 (unnamed cases get 0).
    #[arg(long)]
    mix_cases: Option<CaseMix>,
    /// Seed of the case draws (use different seeds for runs against one gateway).
    #[arg(long, default_value_t = 1)]
    case_seed: u64,
    /// Count any 200 as right: for baseline targets that answer a fixed body.
    #[arg(long)]
    no_check: bool,
    /// HTTP, transport, timeout and overflow errors tolerated before the run fails.
    #[arg(long, default_value_t = 0)]
    max_errors: u64,
    /// Mismatches printed word for word.
    #[arg(long, default_value_t = 5)]
    show_mismatches: usize,
    /// Print the summary as JSON on stdout (the human one goes to stderr).
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
}

/// A key generated for the run: deterministic, so runs repeat.
fn generated_key(kid: &str, byte: u8) -> (KeyId, SigningKey) {
    (kid.parse().expect("a valid kid"), SigningKey::from_bytes(&[byte; 32]))
}

fn schedule(args: &Args) -> Result<(Schedule, bool)> {
    let (s, ramp) = match (&args.rate, &args.ramp, &args.profile) {
        (Some(rate), _, _) => (Schedule::constant(*rate, args.duration.expect("clap requires it"))?, false),
        (_, Some(ramp), _) => {
            let (from, to) = parse_ramp(ramp)?;
            let (step, hold) = (args.step.expect("clap requires it"), args.step_duration.expect("clap requires it"));
            (Schedule::ramp(from, to, step, hold)?, true)
        }
        (_, _, Some(p)) => (Schedule::profile(*p), false),
        _ => unreachable!("clap requires one schedule"),
    };
    Ok((s.compressed(args.compress)?.scaled(args.scale)?, ramp))
}

fn settings(args: &Args) -> Result<(Settings, Schedule, Generator)> {
    let env = args.env.as_deref().map(Env::load).transpose()?;
    let api = match args.target {
        TargetApi::Scan => Api::Scan,
        TargetApi::Lookup => Api::Lookup,
    };
    let check = !args.no_check;
    let mut urls = args.url.clone();
    if urls.is_empty() {
        urls.extend(env.as_ref().map(|e| e.public_url.clone()));
    }
    let ca = args.ca.clone().or_else(|| env.as_ref().and_then(|e| e.ca_cert.clone()));
    let endpoint = Endpoint::parse(urls.first().context("--url or --env is required")?, ca.as_deref())?;
    let replicas = urls[1..].iter().map(|u| Endpoint::parse(u, ca.as_deref())).collect::<Result<Vec<_>, _>>()?;
    if args.connections < urls.len() {
        bail!("--connections ({}) must be at least the number of --url targets ({})", args.connections, urls.len());
    }
    let key = args.api_key.clone().or_else(|| {
        env.as_ref().map(|e| match api {
            Api::Scan => e.api_keys.turnstile.clone(),
            Api::Lookup => e.api_keys.inspector.clone(),
        })
    });
    let bearer = HeaderValue::from_str(&format!("Bearer {}", key.context("--api-key or --env is required")?))
        .context("the API key is not a valid header value")?;
    let issuer_key = args.issuer_key.clone().or_else(|| env.as_ref().map(|e| e.issuer_key.clone()));
    let issuer = match issuer_key {
        Some(path) => load_key(&path)?,
        // Nothing checks the signature of a baseline's answer.
        None if !check || api == Api::Lookup => generated_key("LG01", 0x11),
        None => bail!("--issuer-key or --env is required to check answers (or pass --no-check)"),
    };
    let untrusted_key = args.untrusted_key.clone().or_else(|| env.as_ref().and_then(|e| e.untrusted_key.clone()));
    let untrusted = match untrusted_key {
        Some(path) => load_key(&path)?,
        None => generated_key("ZZ99", 0x22),
    };
    if untrusted.0 == issuer.0 {
        bail!("the untrusted key has the issuer's kid {}", issuer.0);
    }
    let mut checkpoints = args.checkpoints.clone();
    if checkpoints.is_empty() {
        checkpoints = env.as_ref().and_then(|e| e.checkpoints.get("metro").cloned()).unwrap_or_default();
    }
    if checkpoints.is_empty() && api == Api::Scan {
        match check {
            true => bail!("no checkpoints: pass --checkpoint or an --env with metro checkpoints"),
            false => checkpoints.push("bench".into()),
        }
    }
    let base = env.as_ref().map_or(DEFAULT_POPULATION, |e| e.population);
    let population = Population {
        seed: args.seed.unwrap_or(base.seed),
        size: args.size.unwrap_or(base.size),
        mix: args.mix.unwrap_or(base.mix),
    };
    let (schedule, ramp) = schedule(args)?;
    let mix = args.mix_cases.unwrap_or_default();
    let world = World { population, issuer, untrusted, checkpoints };
    let generator = Generator::new(world, api, mix, args.case_seed)?;
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.tick.is_zero() || args.tick > healthgate_loadgen::client::MAX_TICK {
        bail!("--tick must be above 0 and at most {:?}", healthgate_loadgen::client::MAX_TICK);
    }
    let settings = Settings {
        endpoint,
        replicas,
        bearer,
        api,
        connections: args.connections,
        threads: args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1),
        timeout: args.timeout,
        check,
        max_backlog: args.max_backlog.max(1),
        tick: args.tick,
        ahead: args.sign_ahead,
        max_errors: args.max_errors,
        show_mismatches: args.show_mismatches,
        slo: ramp.then_some(args.slo_p99),
        progress: !args.quiet,
    };
    if !args.quiet {
        let cases = if api == Api::Scan { format!(", cases {mix}") } else { String::new() };
        eprintln!(
            "target {} ({}), {schedule}, {} connections{cases}",
            url_of(args, env.as_ref()),
            settings.endpoint.addr,
            settings.connections
        );
    }
    Ok((settings, schedule, generator))
}

fn url_of(args: &Args, env: Option<&Env>) -> String {
    match args.url.is_empty() {
        true => env.map(|e| e.public_url.clone()).unwrap_or_default(),
        false => args.url.join(","),
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(64) } else { ExitCode::SUCCESS };
        }
    };
    let (settings, schedule, generator) = match settings(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(64);
        }
    };
    // Connecting, the start and the progress line: the workers run their
    // own event loops.
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("building the tokio runtime");
    let summary = match runtime.block_on(healthgate_loadgen::run(settings, schedule, generator)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        eprintln!("{summary}");
        println!("{}", serde_json::to_string_pretty(&summary).expect("the summary serialises"));
    } else {
        println!("{summary}");
    }
    if summary.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
