//! The verifier stage: scans that arrive together are verified together.
//!
//! A request worker decodes a scan's code, hands it to the stage
//! ([`Verifier::submit`]) and awaits its answer on a oneshot. The stage is
//! a few dedicated threads (one per CPU by default) around one queue: a
//! thread that comes free takes *everything* queued (up to `max_batch`)
//! and verifies it with one batch equation (`verify::verify_many`). There is
//! no waiting for a batch to fill: a scan that finds a thread idle is
//! verified alone at once, so latency at low load is one thread hand-off
//! more than verifying on the worker; under load the queue fills while the
//! threads are busy and the batches grow by themselves, and each code costs
//! a fraction of a single check.
//!
//! Verification takes tens of microseconds per code, and a batch
//! milliseconds: that belongs on its own threads, not on the async workers
//! (which only route and wait). The queue needs no bound of its own: each
//! job belongs to a request in flight, and requests in flight are bounded by
//! the connection cap (HTTP/1: one request per connection at a time).
//!
//! The stage holds no reference to the gateway: each job carries what
//! `verify_many` needs (the code, the live configuration and revocations
//! the scan loaded, the region, the clock reading), so a configuration swap
//! in the middle of a batch changes nothing for the scans already in it.
//! When the stage is dropped its threads finish what is queued and stop; a
//! job that finds it closed is refused at once and the caller verifies on
//! its own.

use super::LiveConfig;
use crate::clock::UnixSecs;
use crate::revocation::Revocations;
use crate::token::{RawToken, VerifiedToken, VerifyError};
use crate::verify::{verify_many, Request};
use prometheus::Histogram;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// A verified token and whether its revocation probe was a filter false
/// positive (see `verify::Verified`), or why it failed.
pub type Answer = Result<(VerifiedToken, bool), VerifyError>;

/// One scan's code with everything its verification depends on.
pub struct Job {
    pub raw: RawToken,
    pub live: Arc<LiveConfig>,
    /// Index of the checkpoint's region in `live`'s policy.
    pub region: usize,
    pub revocations: Arc<Revocations>,
    pub now: UnixSecs,
    pub reply: oneshot::Sender<Answer>,
}

struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting for work: a submit wakes one only when there is one
    /// (a wake-up is a system call; a busy thread will drain the queue anyway).
    idle: usize,
    closed: bool,
}

struct Shared {
    /// A std Mutex, not a tokio one: nothing awaits while holding it, and it
    /// is held only to push or to drain.
    queue: Mutex<Queue>,
    work: Condvar,
    /// Secret coefficients' seed of the batch equation (`signature`).
    seed: [u8; 32],
    max_batch: usize,
    batch_size: Histogram,
}

pub struct Verifier {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Verifier {
    /// Starts `threads` verifier threads (at least one).
    pub fn start(threads: usize, max_batch: usize, batch_size: Histogram) -> std::io::Result<Verifier> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { jobs: VecDeque::new(), idle: 0, closed: false }),
            work: Condvar::new(),
            seed: rand::random(),
            max_batch: max_batch.max(1),
            batch_size,
        });
        let threads = (0..threads.max(1))
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new().name(format!("healthgate-verify-{i}")).spawn(move || shared.run())
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Verifier { shared, threads })
    }

    /// Queues a job; its answer arrives on the job's `reply`. False when
    /// the stage is closed (the job is dropped: the caller verifies itself).
    #[must_use]
    pub fn submit(&self, job: Job) -> bool {
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.closed {
            return false;
        }
        q.jobs.push_back(job);
        let wake = q.idle > 0;
        drop(q);
        if wake {
            self.shared.work.notify_one();
        }
        true
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.shared.work.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn run(&self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while self.next_batch(&mut batch) {
            self.verify(&mut batch);
        }
    }

    /// Waits for work and takes all of it up to `max_batch`; false once the
    /// stage is closed and drained.
    fn next_batch(&self, batch: &mut Vec<Job>) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        while q.jobs.is_empty() {
            if q.closed {
                return false;
            }
            q.idle += 1;
            q = self.work.wait(q).unwrap_or_else(|e| e.into_inner());
            q.idle -= 1;
        }
        let n = q.jobs.len().min(self.max_batch);
        batch.extend(q.jobs.drain(..n));
        // More left than one batch takes: another idle thread can start on it.
        let wake = !q.jobs.is_empty() && q.idle > 0;
        drop(q);
        if wake {
            self.work.notify_one();
        }
        true
    }

    fn verify(&self, batch: &mut Vec<Job>) {
        // A region index always comes from the job's own configuration;
        // should one not, the job fails closed (`None` would mean "any
        // issuer", the offline tool's reading).
        batch.retain_mut(|j| {
            if j.region < j.live.policy.regions().len() {
                return true;
            }
            let reply = std::mem::replace(&mut j.reply, oneshot::channel().0);
            let _ = reply.send(Err(VerifyError::UnknownIssuer(j.raw.claims.kid)));
            false
        });
        if batch.is_empty() {
            return;
        }
        let requests: Vec<Request<'_>> = batch
            .iter()
            .map(|j| Request {
                raw: &j.raw,
                trust: j.live.trust(),
                region: Some(&j.live.policy.regions()[j.region]),
                revocations: Some(&j.revocations),
                now: j.now,
            })
            .collect();
        let answers: Vec<Answer> = verify_many(&requests, &self.seed)
            .into_iter()
            .map(|r| r.map(|v| (v.token, v.filter_false_positive)))
            .collect();
        drop(requests);
        self.batch_size.observe(batch.len() as f64);
        for (job, answer) in batch.drain(..).zip(answers) {
            // The scan may have gone (client gone, shutdown): nothing to do.
            let _ = job.reply.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operations::config::Config;
    use crate::operations::demo::{prepare, DemoOptions};
    use crate::operations::keyfiles::read_secret;
    use crate::token::Claims;
    use crate::Color;

    #[test]
    fn a_free_thread_takes_everything_queued_as_one_batch_and_answers_each() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let opts = DemoOptions { size: 100, ..Default::default() };
        let env = prepare(dir.path(), &opts, "127.0.0.1:0", "127.0.0.1:0", now).unwrap();
        let config = Config::load(&env.config).unwrap();
        let live = Arc::new(LiveConfig::from_config(&config, 1));
        let revocations = Arc::new(Revocations::empty(config.revocation_filter, [0; 32]));
        let checkpoint = &env.checkpoints["metro"][0];
        let region = live.policy.place(checkpoint).unwrap().checkpoint.region;
        let (kid, issuer) = read_secret(&env.issuer_key).unwrap();
        let (_, forger) = read_secret(&env.forged_key).unwrap();
        let registry = prometheus::Registry::new();
        let metrics = crate::operations::metrics::Metrics::new(&registry).unwrap();
        let stage = Verifier::start(1, 64, metrics.verify_batch_size.clone()).unwrap();

        let mut answers = Vec::new();
        {
            // Holding the queue while queueing: the thread cannot start on
            // part of it.
            let mut q = stage.shared.queue.lock().unwrap();
            for i in 0..20u64 {
                let claims = Claims {
                    kid,
                    holder: crate::HolderId([i as u8; 16]),
                    issued_at: now,
                    expires_at: now + 60,
                    color: Color::Green,
                    serial: i,
                };
                let signer = if i % 7 == 3 { &forger } else { &issuer };
                let raw = RawToken::decode(&claims.sign(signer).unwrap()).unwrap();
                let (reply, answer) = oneshot::channel();
                q.jobs.push_back(Job { raw, live: live.clone(), region, revocations: revocations.clone(), now, reply });
                answers.push((i, answer));
            }
        }
        stage.shared.work.notify_all();
        for (i, answer) in answers {
            let got = answer.blocking_recv().expect("answered");
            if i % 7 == 3 {
                assert_eq!(got.unwrap_err(), VerifyError::BadSignature, "code {i}");
            } else {
                assert_eq!(got.unwrap().0.claims().serial, i);
            }
        }
        assert_eq!(metrics.verify_batch_size.get_sample_count(), 1);
        assert_eq!(metrics.verify_batch_size.get_sample_sum(), 20.0);

        // A job for a region its configuration does not have fails closed.
        let raw = RawToken::decode(
            &Claims {
                kid,
                holder: env.holders["green"][0],
                issued_at: now,
                expires_at: now + 60,
                color: Color::Green,
                serial: 1,
            }
            .sign(&issuer)
            .unwrap(),
        )
        .unwrap();
        let (reply, answer) = oneshot::channel();
        let job = Job { raw, live: live.clone(), region: 99, revocations: revocations.clone(), now, reply };
        assert!(stage.submit(job));
        assert!(matches!(answer.blocking_recv().unwrap(), Err(VerifyError::UnknownIssuer(_))));

        // That job never reached a batch equation.
        assert_eq!(metrics.verify_batch_size.get_sample_count(), 1);

        // A lone scan on an idle stage is verified at once, alone: no
        // waiting for company.
        let lone = Claims {
            kid,
            holder: env.holders["green"][1],
            issued_at: now,
            expires_at: now + 60,
            color: Color::Green,
            serial: 2,
        };
        let raw = RawToken::decode(&lone.sign(&issuer).unwrap()).unwrap();
        let (reply, answer) = oneshot::channel();
        assert!(stage.submit(Job { raw, live, region, revocations: revocations.clone(), now, reply }));
        assert_eq!(answer.blocking_recv().unwrap().unwrap().0.claims().serial, 2);
        assert_eq!(metrics.verify_batch_size.get_sample_count(), 2);
        assert_eq!(metrics.verify_batch_size.get_sample_sum(), 21.0);

        // Dropping the stage finishes what is queued and stops its threads.
        drop(stage);
    }
}
