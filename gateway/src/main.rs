//! The `healthgate` command: parse arguments, load and validate
//! configuration, set up logging, then hand over to the library.
//!
//! Exit codes: 0 success, 1 the operation failed (a code that does not
//! verify, a server that could not start), 64 bad usage or configuration.

use anyhow::Context;
use clap::{Parser, Subcommand};
use healthgate::clock::{format_rfc3339, parse_rfc3339, Clock, SystemClock};
use healthgate::feed::{Change, Revocation, RevocationBatch, Target, UpdateBatch};
use healthgate::operations::client::ApiClient;
use healthgate::population::{Mix, Population};
use healthgate::state::Step;
use healthgate::token::{Claims, KeyId, DEFAULT_SKEW_SECS, DEFAULT_TTL_SECS};
use healthgate::verify::{decode_and_verify, Trust, Verified};
use healthgate::{Color, HolderId};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

const EX_FAILED: u8 = 1;
const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(name = "healthgate", version, about = "Verification gateway for signed health codes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an Ed25519 key pair: PREFIX.key (secret, mode 0600) and PREFIX.pub.
    Keygen {
        /// Key id carried in every code: 1 to 4 letters or digits (e.g. HB01).
        #[arg(long)]
        kid: KeyId,
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a health code and print its QR text.
    Issue {
        /// Issuer secret key file (from `keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Holder id: 32 hex digits.
        #[arg(long)]
        holder: HolderId,
        /// Lifetime in seconds (dynamic codes are short-lived).
        #[arg(long, default_value_t = DEFAULT_TTL_SECS)]
        ttl: u64,
        /// Issue time (RFC 3339); default now.
        #[arg(long, value_parser = parse_rfc3339)]
        issued_at: Option<u64>,
        /// Colour at issue: a hint for offline readers.
        #[arg(long, default_value = "green")]
        color: Color,
        /// Serial number; default random.
        #[arg(long)]
        serial: Option<u64>,
        /// Also render the code as a QR image (.png or .svg).
        #[arg(long)]
        qr: Option<PathBuf>,
    },
    /// Verify one code offline against a trust list; print its claims or why it fails.
    Verify {
        /// Trust list file.
        #[arg(long)]
        trust: PathBuf,
        /// Verify as of this time (RFC 3339); default now.
        #[arg(long, value_parser = parse_rfc3339)]
        at: Option<u64>,
        /// Clock-skew budget in seconds.
        #[arg(long, default_value_t = DEFAULT_SKEW_SECS)]
        skew: u64,
        /// The QR text.
        code: String,
    },
    /// Generate an API key and print it with the hash the configuration takes.
    Apikey,
    /// Write a deterministic synthetic population as a state file.
    Seed {
        #[arg(long)]
        size: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "green=0.95,yellow=0.03,red=0.01,pending=0.01")]
        mix: Mix,
        /// Health-record time of every holder (RFC 3339); default now.
        #[arg(long, value_parser = parse_rfc3339)]
        at: Option<u64>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Push signed colour changes to a gateway (the health authority's feed).
    Push {
        #[command(flatten)]
        target: FeedTarget,
        /// HOLDER=COLOR[,until=RFC3339,then=COLOR[,until=...,then=...]]; repeatable.
        #[arg(long = "set", value_parser = parse_change)]
        set: Vec<Change>,
        /// JSON lines, one {"holder", "color", "steps"} a line, for bulk.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Changes per signed batch.
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
    },
    /// Revoke a holder (all their codes) or one code by serial.
    Revoke {
        #[command(flatten)]
        target: FeedTarget,
        #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
        holder: Option<HolderId>,
        #[arg(long)]
        serial: Option<u64>,
        /// Drop the entry after this time (RFC 3339).
        #[arg(long, value_parser = parse_rfc3339)]
        expires: Option<u64>,
    },
    /// Run the gateway.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a complete demo gateway on embedded defaults (no external service).
    /// On a folder that already holds a demo it resumes that demo: same
    /// keys, configuration, state, log and tracing index.
    Demo {
        /// Where keys, configuration, state and env.json are written.
        #[arg(long, default_value = "healthgate-demo")]
        dir: PathBuf,
        /// Population size of a new demo [default: 100000].
        #[arg(long)]
        size: Option<u64>,
        /// Population seed of a new demo [default: 1].
        #[arg(long)]
        seed: Option<u64>,
        /// Delete the demo in DIR (keys, state, log, tracing index) and
        /// start a new one.
        #[arg(long)]
        fresh: bool,
        #[arg(long, default_value = "127.0.0.1:8080")]
        public: String,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: String,
        /// Serve HTTPS on both listeners, with a certificate from a private
        /// CA written to DIR/tls/ca.pem (named in env.json as ca_cert).
        #[arg(long)]
        tls: bool,
    },
}

/// Where and as whom `push` and `revoke` send their signed batches.
#[derive(clap::Args)]
struct FeedTarget {
    /// Authority secret key file.
    #[arg(long)]
    key: PathBuf,
    /// Admin base URL, e.g. http://127.0.0.1:9090 (or https://...).
    #[arg(long)]
    admin: String,
    /// PEM file of the CA that signed the gateway's certificate (https only).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// API key of the authority role.
    #[arg(long)]
    api_key: String,
    /// Sequence number of the first batch; default one past the gateway's last.
    #[arg(long)]
    seq: Option<u64>,
}

/// Failures that are the caller's fault exit 64, the rest 1.
enum Failure {
    Usage(anyhow::Error),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Failed(e)
    }
}

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Usage(e.into())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "healthgate=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match execute(cli.command) {
        Ok(code) => code,
        Err(Failure::Usage(e)) => {
            eprintln!("healthgate: {e:#}");
            ExitCode::from(EX_USAGE)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("healthgate: {e:#}");
            ExitCode::from(EX_FAILED)
        }
    }
}

fn execute(command: Command) -> Result<ExitCode, Failure> {
    match command {
        Command::Keygen { kid, out } => {
            let key = healthgate::operations::keyfiles::generate();
            let (s, p) =
                healthgate::operations::keyfiles::write_keypair(&out, kid, &key).map_err(anyhow::Error::from)?;
            println!("{}\n{}", s.display(), p.display());
        }
        Command::Issue { key, holder, ttl, issued_at, color, serial, qr } => {
            let (kid, signing) = healthgate::operations::keyfiles::read_secret(&key).map_err(usage)?;
            let issued_at = issued_at.unwrap_or_else(|| SystemClock.now());
            if ttl == 0 {
                return Err(usage(anyhow::anyhow!("--ttl must be at least 1")));
            }
            let claims = Claims {
                kid,
                holder,
                issued_at,
                expires_at: issued_at.saturating_add(ttl),
                color,
                serial: serial.unwrap_or_else(rand::random),
            };
            let text = claims.sign(&signing).map_err(usage)?;
            if let Some(path) = qr {
                render_qr(&text, &path).map_err(usage)?;
            }
            println!("{text}");
        }
        Command::Verify { trust, at, skew, code } => {
            let trust = healthgate::operations::config::load_trust(&trust).map_err(usage)?;
            let now = at.unwrap_or_else(|| SystemClock.now());
            let trusted = Trust { list: &trust, skew_s: skew };
            match decode_and_verify(&code, trusted, None, None, now) {
                Ok(Verified { token, key, .. }) => {
                    let c = token.claims();
                    println!("valid");
                    println!("issuer:     {} (key {})", trust.issuers()[key.issuer].id, c.kid);
                    println!("holder:     {}", c.holder);
                    println!("color:      {} (at issue)", c.color);
                    println!("issued_at:  {}", format_rfc3339(c.issued_at));
                    println!("expires_at: {}", format_rfc3339(c.expires_at));
                    println!("serial:     {}", c.serial);
                }
                Err(e) => {
                    println!("invalid: {}: {e}", e.reason().as_str());
                    return Ok(ExitCode::from(EX_FAILED));
                }
            }
        }
        Command::Apikey => {
            let k = healthgate::operations::auth::generate_key();
            println!("key:  {k}\nhash: {}", healthgate::operations::auth::hash_key(&k));
        }
        Command::Seed { size, seed, mix, at, out } => {
            let pop = Population { seed, size, mix };
            let at = at.unwrap_or_else(|| SystemClock.now());
            let started = std::time::Instant::now();
            healthgate::durability::state_file::write_population(&out, &pop, at).map_err(anyhow::Error::from)?;
            eprintln!("wrote {size} holders to {} in {:.1?}", out.display(), started.elapsed());
        }
        Command::Push { target, mut set, file, batch } => {
            if let Some(path) = file {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))
                    .map_err(usage)?;
                for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    let c: Change = serde_json::from_str(line)
                        .with_context(|| format!("{}:{}", path.display(), n + 1))
                        .map_err(usage)?;
                    set.push(c);
                }
            }
            if set.is_empty() {
                return Err(usage(anyhow::anyhow!("nothing to push: give --set or --file")));
            }
            if batch == 0 || batch > healthgate::feed::MAX_BATCH {
                return Err(usage(anyhow::anyhow!("--batch must be between 1 and {}", healthgate::feed::MAX_BATCH)));
            }
            let chunks: Vec<&[Change]> = set.chunks(batch).collect();
            return send_batches(&target, "/v1/admin/updates", chunks.len(), |seq, i, kid, key| {
                let b = UpdateBatch { seq, kid: String::new(), changes: chunks[i].to_vec(), signature: String::new() };
                Ok(serde_json::to_vec(&b.sign(kid, key).map_err(usage)?).expect("json"))
            });
        }
        Command::Revoke { target, holder, serial, expires } => {
            let what = match (holder, serial) {
                (Some(h), None) => Target::Holder(h),
                (None, Some(s)) => Target::Serial(s),
                _ => return Err(usage(anyhow::anyhow!("give exactly one of --holder and --serial"))),
            };
            return send_batches(&target, "/v1/admin/revocations", 1, |seq, _, kid, key| {
                let revocations = vec![Revocation { target: what, expires }];
                let b = RevocationBatch { seq, kid: String::new(), revocations, signature: String::new() };
                Ok(serde_json::to_vec(&b.sign(kid, key).map_err(usage)?).expect("json"))
            });
        }
        Command::Serve { config } => {
            let config = healthgate::operations::config::Config::load(&config).map_err(usage)?;
            healthgate::operations::limits::fit(&config.server).map_err(usage)?;
            serve(config, None)?;
        }
        Command::Demo { dir, size, seed, fresh, public, admin, tls } => {
            use healthgate::operations::demo::{self, DemoOptions, Requested};
            let resumed = match fresh {
                true => None,
                false => demo::existing(&dir, &Requested { size, seed, tls }).map_err(usage)?,
            };
            let (env, config) = match resumed {
                Some(env) => {
                    // The folder's configuration, on the listeners asked for now.
                    let mut config = healthgate::operations::config::Config::load(&env.config).map_err(usage)?;
                    config.server.public_addr =
                        public.parse().with_context(|| format!("--public {public}")).map_err(usage)?;
                    config.server.admin_addr =
                        admin.parse().with_context(|| format!("--admin {admin}")).map_err(usage)?;
                    tracing::info!(dir = %dir.display(), "resuming the demo in this folder (--fresh starts over)");
                    (env, config)
                }
                None => {
                    let defaults = DemoOptions::default();
                    let opts = DemoOptions {
                        size: size.unwrap_or(defaults.size),
                        seed: seed.unwrap_or(defaults.seed),
                        tls,
                        ..defaults
                    };
                    let env = demo::prepare(&dir, &opts, &public, &admin, SystemClock.now())
                        .with_context(|| format!("preparing {}", dir.display()))?;
                    let config = healthgate::operations::config::Config::load(&env.config).map_err(usage)?;
                    (env, config)
                }
            };
            healthgate::operations::limits::fit(&config.server).map_err(usage)?;
            serve(config, Some((env, dir)))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `HOLDER=COLOR[,until=T,then=COLOR]...`
fn parse_change(s: &str) -> Result<Change, String> {
    let (holder, rest) = s.split_once('=').ok_or("expected HOLDER=COLOR[,until=RFC3339,then=COLOR...]")?;
    let holder: HolderId = holder.parse().map_err(|e: healthgate::holder::ParseHolderError| e.to_string())?;
    let mut parts = rest.split(',');
    let color: Color =
        parts.next().unwrap_or_default().parse().map_err(|e: healthgate::color::ParseColorError| e.to_string())?;
    let mut steps = Vec::new();
    while let Some(until) = parts.next() {
        let until = until.strip_prefix("until=").ok_or("expected until=RFC3339")?;
        let then = parts.next().and_then(|t| t.strip_prefix("then=")).ok_or("every until= needs a then=COLOR")?;
        steps.push(Step {
            until: parse_rfc3339(until).map_err(|e| e.to_string())?,
            then: then.parse().map_err(|e: healthgate::color::ParseColorError| e.to_string())?,
        });
    }
    Ok(Change { holder, color, steps })
}

/// Signs and posts `count` batches with consecutive sequence numbers
/// (`make(seq, i, kid, key)` builds the i-th body) and prints the gateway's
/// last epoch.
fn send_batches(
    t: &FeedTarget,
    path: &str,
    count: usize,
    make: impl Fn(u64, usize, healthgate::token::KeyId, &ed25519_dalek::SigningKey) -> Result<Vec<u8>, Failure>,
) -> Result<ExitCode, Failure> {
    let (kid, signing) = healthgate::operations::keyfiles::read_secret(&t.key).map_err(usage)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(anyhow::Error::from)?;
    rt.block_on(async {
        let client = ApiClient::new(&t.admin, &t.api_key, t.ca.as_deref()).map_err(usage)?;
        let first = match t.seq {
            Some(s) => s,
            None => next_seq(&client).await?,
        };
        let mut epoch = 0;
        for i in 0..count {
            let body = make(first + i as u64, i, kid, &signing)?;
            epoch = post_batch(&client, path, body).await?;
        }
        println!("{epoch}");
        Ok(ExitCode::SUCCESS)
    })
}

/// One past the gateway's last applied feed sequence.
async fn next_seq(client: &ApiClient) -> Result<u64, Failure> {
    let (status, v) = client.request(http::Method::GET, "/v1/admin/feed", None).await.map_err(anyhow::Error::from)?;
    if !status.is_success() {
        let why = v["error"].as_str().unwrap_or("refused");
        return Err(Failure::Failed(anyhow::anyhow!("/v1/admin/feed: {status}: {why}")));
    }
    Ok(v["last_seq"].as_u64().unwrap_or(0) + 1)
}

/// Posts a signed batch; returns the new epoch or the server's reason.
async fn post_batch(client: &ApiClient, path: &str, body: Vec<u8>) -> Result<u64, Failure> {
    let (status, v) = client.request(http::Method::POST, path, Some(body)).await.map_err(anyhow::Error::from)?;
    if !status.is_success() {
        let why = v["error"].as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
        return Err(Failure::Failed(anyhow::anyhow!("refused ({status}): {why}")));
    }
    Ok(v["epoch"].as_u64().unwrap_or(0))
}

fn render_qr(text: &str, path: &std::path::Path) -> anyhow::Result<()> {
    use qrcode::{EcLevel, QrCode};
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("png") => {
            let img = code.render::<image::Luma<u8>>().quiet_zone(true).module_dimensions(6, 6).build();
            img.save(path).with_context(|| format!("writing {}", path.display()))?;
        }
        Some("svg") => {
            let svg = code.render::<qrcode::render::svg::Color<'_>>().quiet_zone(true).min_dimensions(240, 240).build();
            std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
        }
        _ => anyhow::bail!("--qr must end in .png or .svg"),
    }
    Ok(())
}

/// Binds, prints (for the demo), serves until SIGTERM or SIGINT.
fn serve(
    config: healthgate::operations::config::Config,
    demo: Option<(healthgate::operations::demo::Env, PathBuf)>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        use healthgate::serving::server;
        let listeners = server::Listeners::bind(&config.server).await?;
        let (public, admin) = listeners.addrs();
        tracing::info!(%public, %admin, "listening");
        if let Some((mut env, dir)) = demo {
            let scheme = |on: bool| if on { "https" } else { "http" };
            let tls = config.tls.as_ref();
            env.public_url = format!("{}://{public}", scheme(tls.is_some_and(|t| t.public)));
            env.admin_url = format!("{}://{admin}", scheme(tls.is_some_and(|t| t.admin)));
            env.write(&dir)?;
            let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "healthgate".into());
            println!("{}", healthgate::operations::demo::walkthrough(&env, &exe));
        }
        let gw = server::build(&config, Arc::new(SystemClock))?;
        server::run(gw, &config, listeners, server::shutdown_signal()).await?;
        anyhow::Ok(())
    })
}
