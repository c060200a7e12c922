//! Scans keep flowing during a large recolor: the p99 latency of a steady
//! scan stream before and while the authority pushes 100 000-holder batches.
//!
//! Starts the demo gateway in-process on port 0 (its real HTTP listeners),
//! sends scans open-loop at a fixed rate over keep-alive connections with
//! latency measured from each scan's intended send time, and, in the second
//! phase, pushes signed recolor batches of 100 000 holders back to back.
//!
//! `cargo run --release -p healthgate-benches --bin recolor_p99 -- [RATE] [SECONDS]`

use bytes::Bytes;
use hdrhistogram::Histogram;
use healthgate::clock::{Clock, SystemClock};
use healthgate::feed::{Change, UpdateBatch};
use healthgate::token::Claims;
use healthgate::Color;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const POPULATION: u64 = 300_000;
const RECOLOUR: usize = 100_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rate: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let seconds: u64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir()?;
    let now = SystemClock.now();
    let opts = healthgate::operations::demo::DemoOptions { size: POPULATION, seed: 11, ..Default::default() };
    let env = healthgate::operations::demo::prepare(dir.path(), &opts, "127.0.0.1:0", "127.0.0.1:0", now)?;
    let config = healthgate::operations::config::Config::load(&env.config)?;
    let gw = healthgate::serving::server::build(&config, Arc::new(SystemClock))?;
    let listeners = healthgate::serving::server::Listeners::bind(&config.server).await?;
    let (public, admin) = listeners.addrs();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let (gw, config) = (gw.clone(), config.clone());
        tokio::spawn(async move {
            healthgate::serving::server::run(gw, &config, listeners, async {
                let _ = stop_rx.await;
            })
            .await
        })
    };
    while !gw.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (kid, issuer) = healthgate::operations::keyfiles::read_secret(&env.issuer_key)?;
    let turnstile = env.api_key(healthgate::operations::auth::Role::Turnstile).to_owned();
    // Scans target holders the recolor never touches (the first 100 000
    // are recolored), at the metro, going out (no anti-passback), so every
    // answer should be the same pass.
    let greens: Vec<_> =
        (RECOLOUR as u64..POPULATION).filter(|&i| env.population.color(i) == Color::Green).take(5000).collect();
    let codes: Arc<Vec<String>> = Arc::new(
        greens
            .iter()
            .map(|&i| {
                Claims {
                    kid,
                    holder: env.population.holder(i),
                    issued_at: now,
                    expires_at: now + 3600,
                    color: Color::Green,
                    serial: i,
                }
                .sign(&issuer)
                .expect("sign")
            })
            .collect(),
    );

    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build(connector);
    let scan_url = format!("http://{public}/v1/scan");
    let run_phase = |label: &'static str, recolor: bool| {
        let (client, codes, url, key) = (client.clone(), codes.clone(), scan_url.clone(), turnstile.clone());
        let env = env.clone();
        async move {
            let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds")));
            let bad = Arc::new(Mutex::new(0u64));
            let pushing = Arc::new(AtomicBool::new(recolor));
            let pusher = recolor.then(|| {
                let pushing = pushing.clone();
                let env = env.clone();
                let admin = format!("http://{admin}/v1/admin/updates");
                let client = client.clone();
                tokio::spawn(async move {
                    let (akid, akey) =
                        healthgate::operations::keyfiles::read_secret(&env.authority_key).expect("authority key");
                    let key = env.api_key(healthgate::operations::auth::Role::Authority).to_owned();
                    let mut seq: u64 = 1;
                    let mut pushed = 0;
                    let started = Instant::now();
                    while pushing.load(Ordering::Relaxed) {
                        let color = if !seq.is_multiple_of(2) { Color::Yellow } else { Color::Green };
                        let changes = (0..RECOLOUR as u64)
                            .map(|i| Change { holder: env.population.holder(i), color, steps: vec![] })
                            .collect();
                        let b = UpdateBatch { seq, kid: String::new(), changes, signature: String::new() }
                            .sign(akid, &akey)
                            .expect("sign");
                        let body = serde_json::to_vec(&b).expect("json");
                        let req = http::Request::post(&admin)
                            .header("authorization", format!("Bearer {key}"))
                            .body(Full::new(Bytes::from(body)))
                            .expect("request");
                        let r = client.request(req).await.expect("push");
                        assert!(r.status().is_success(), "push refused: {}", r.status());
                        let _ = r.into_body().collect().await;
                        seq += 1;
                        pushed += RECOLOUR;
                    }
                    (pushed, started.elapsed())
                })
            });
            // Pacing runs on its own thread: tokio's timer has millisecond
            // granularity, which would add up to a millisecond of the
            // generator's own lateness to every latency (measured from the
            // intended send time).
            let interval = Duration::from_nanos(1_000_000_000 / rate);
            let total = rate * seconds;
            let handle = tokio::runtime::Handle::current();
            let (hist2, bad2) = (hist.clone(), bad.clone());
            let pacer = std::thread::spawn(move || {
                let (hist, bad) = (hist2, bad2);
                let start = Instant::now() + Duration::from_millis(50);
                let mut tasks = Vec::with_capacity(total as usize);
                for n in 0..total {
                    let intended = start + interval * n as u32;
                    if let Some(wait) = intended.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let (client, url, key, hist, bad) =
                        (client.clone(), url.clone(), key.clone(), hist.clone(), bad.clone());
                    let code = codes[n as usize % codes.len()].clone();
                    tasks.push(handle.spawn(async move {
                        let body =
                            format!(r#"{{"code":"{code}","checkpoint":"wuhan-metro-wuchang-1","direction":"out"}}"#);
                        let req = http::Request::post(&url)
                            .header("authorization", format!("Bearer {key}"))
                            .body(Full::new(Bytes::from(body)))
                            .expect("request");
                        let ok = match client.request(req).await {
                            Ok(r) => {
                                let ok = r.status().is_success();
                                let b = r.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                ok && b.windows(6).any(|w| w == b"\"pass\"")
                            }
                            Err(_) => false,
                        };
                        let us = intended.elapsed().as_micros() as u64;
                        hist.lock().expect("hist").record(us.max(1)).expect("in range");
                        if !ok {
                            *bad.lock().expect("bad") += 1;
                        }
                    }));
                }
                tasks
            });
            let tasks = tokio::task::spawn_blocking(move || pacer.join().expect("pacer")).await.expect("join");
            for t in tasks {
                let _ = t.await;
            }
            pushing.store(false, Ordering::Relaxed);
            let pushed = match pusher {
                Some(p) => Some(p.await.expect("pusher")),
                None => None,
            };
            let h = hist.lock().expect("hist");
            println!(
                "{label:<22} scans {:>6}  p50 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs  max {:>6} µs  not-pass {}{}",
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
                *bad.lock().expect("bad"),
                pushed
                    .map(|(n, d)| format!(
                        "  recolored {n} holders in {:.1?} ({:.0} changes/s end to end)",
                        d,
                        n as f64 / d.as_secs_f64()
                    ))
                    .unwrap_or_default()
            );
        }
    };
    println!("{rate} scans/s for {seconds} s per phase, {POPULATION} holders, batches of {RECOLOUR}");
    run_phase("baseline", false).await;
    run_phase("during recolor", true).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(())
}
