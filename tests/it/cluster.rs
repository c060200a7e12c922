//! Replicas sharing state through a real `nats-server` (docs/CLUSTER.md):
//! authority batches in force everywhere, a fever at one replica denying at
//! another, tracing answers for the whole cluster, forged and replayed
//! batches in the stream refused by every replica, restarts, a late
//! joiner, and NATS going away and coming back. Each test starts its own
//! nats-server on a free port and stops it by its process id.

use healthgate::clock::{Clock, ManualClock, SystemClock};
use healthgate::feed::{Change, UpdateBatch};
use healthgate::operations::auth::Role;
use healthgate::operations::demo::{DemoOptions, Env};
use healthgate::{Color, HolderId};
use healthgate_tests::nats::NatsServer;
use healthgate_tests::replicas::copy_tree;
use healthgate_tests::TestGateway;
use http::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

/// One demo deployment that every replica copies (same keys, trust list,
/// policy and seed state), and the clock they share.
struct Deployment {
    base: tempfile::TempDir,
    env: Env,
    clock: ManualClock,
}

impl Deployment {
    fn new() -> Deployment {
        let base = tempfile::tempdir().expect("tempdir");
        let now = SystemClock.now();
        let opts = DemoOptions { size: 2_000, seed: 7, ..Default::default() };
        let env =
            healthgate::operations::demo::prepare(base.path(), &opts, "127.0.0.1:0", "127.0.0.1:0", now).expect("demo");
        Deployment { base, env, clock: ManualClock::new(now) }
    }

    /// A replica named `node` on its own copy of the deployment.
    async fn replica(&self, node: &str, nats: &NatsServer) -> TestGateway {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_tree(self.base.path(), dir.path());
        let rel = self.env.config.strip_prefix(self.base.path()).expect("config inside the demo");
        let mut env = self.env.clone();
        env.config = dir.path().join(rel);
        let mut text = std::fs::read_to_string(&env.config).expect("config");
        text.push_str(&format!("\n[cluster]\nnode = \"{node}\"\nnats_url = \"{}\"\n", nats.url()));
        std::fs::write(&env.config, text).expect("config");
        TestGateway::start_in(dir, env, self.clock.clone()).await
    }
}

/// Waits (bounded) until `f` holds.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The state digest line of a replica.
async fn digest(t: &TestGateway) -> Value {
    let (s, lines) = t.admin_lines("/v1/admin/cluster/state").await;
    assert_eq!(s, StatusCode::OK, "{lines:?}");
    lines.into_iter().next().expect("summary line")
}

/// Every holder's state, sorted, as a replica reports it.
async fn dump(t: &TestGateway) -> Vec<Value> {
    let (s, mut lines) = t.admin_lines("/v1/admin/cluster/state?holders=1").await;
    assert_eq!(s, StatusCode::OK);
    lines.remove(0);
    lines.sort_by(|a, b| a["holder"].as_str().cmp(&b["holder"].as_str()));
    lines
}

/// Waits until every replica reports the same state digest, then compares
/// them holder by holder.
async fn converge(replicas: &[&TestGateway]) {
    eventually("the replicas' digests agree", || async {
        let mut ds = Vec::new();
        for r in replicas {
            let d = digest(r).await;
            ds.push((d["digest"].clone(), d["revocations_digest"].clone(), d["feed_seq"].clone()));
        }
        ds.windows(2).all(|w| w[0] == w[1])
    })
    .await;
    let first = dump(replicas[0]).await;
    for r in &replicas[1..] {
        assert_eq!(dump(r).await, first, "holder by holder");
    }
}

async fn readyz(t: &TestGateway) -> (StatusCode, Value) {
    t.get(&t.env.admin_url, "/readyz", None).await
}

fn change(h: HolderId, color: Color) -> Change {
    serde_json::from_value(serde_json::json!({"holder": h.to_string(), "color": color.as_str()})).expect("change")
}

/// Publishes raw bytes into the order stream, as someone with access to
/// NATS but not to the authority's key could.
async fn inject(nats: &NatsServer, kind: &str, body: Vec<u8>) {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut h = async_nats::HeaderMap::new();
    h.insert("Hg-Kind", kind);
    h.insert("Hg-At", "1");
    h.insert("Hg-Node", "intruder");
    js.publish_with_headers("healthgate.order.authority", h, body.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_batches_fevers_and_tracing_and_refuse_forged_batches() {
    let nats = NatsServer::start();
    let d = Deployment::new();
    let a = d.replica("a", &nats).await;
    let b = d.replica("b", &nats).await;
    let c = d.replica("c", &nats).await;
    let (_, r) = readyz(&a).await;
    assert_eq!(r["cluster"]["node"], "a", "{r}");
    assert_eq!(r["cluster"]["connected"], true, "{r}");

    // An authority batch posted to one replica is in force on all three.
    let greens = a.greens(4);
    let (s, v) = a.push(1, vec![change(greens[0], Color::Red)]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for t in [&a, &b, &c] {
        let h = greens[0];
        eventually("the batch is in force", || async move { t.color_of(h).await == "red" }).await;
    }
    // The sequence is the cluster's: a replay at another replica is refused.
    let (s, _) = b.push(1, vec![change(greens[1], Color::Red)]).await;
    assert_eq!(s, StatusCode::CONFLICT);

    // A fever at A turns the holder yellow at B.
    let y = greens[2];
    let rail = a.checkpoint("rail").to_owned();
    assert_eq!(a.scan(&a.code(y), &rail, "in", Some(38.4)).await.short(), "deny/fever/yellow");
    eventually("B denies after A's fever", || async {
        b.scan(&b.code(y), &rail, "in", Some(36.5)).await.decision == "deny"
    })
    .await;
    assert_eq!(c.color_of(y).await, "yellow");

    // Tracing on C answers for A's and B's gates.
    let key = c.key(Role::Authority).to_owned();
    eventually("C's tracing answer has A's and B's scans", || {
        let key = key.clone();
        let c = &c;
        async move {
            let (s, v) = c.get(&c.env.admin_url.clone(), &format!("/v1/admin/holders/{y}/visits"), Some(&key)).await;
            let text = v.as_str().unwrap_or_default().to_owned();
            let nodes: Vec<String> = text
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("line")["node"].as_str().unwrap_or("").to_owned())
                .collect();
            s == StatusCode::OK && nodes.contains(&"a".to_owned()) && nodes.contains(&"b".to_owned())
        }
    })
    .await;

    // Forged and replayed batches injected straight into the stream.
    let (kid, forged_key) = healthgate::operations::keyfiles::read_secret(&d.env.forged_key).expect("key");
    let _ = kid;
    let (auth_kid, auth_key) = healthgate::operations::keyfiles::read_secret(&d.env.authority_key).expect("key");
    let forged = UpdateBatch {
        seq: 50,
        kid: String::new(),
        changes: vec![change(greens[3], Color::Red)],
        signature: String::new(),
    }
    .sign(auth_kid, &forged_key)
    .expect("sign");
    inject(&nats, "updates", serde_json::to_vec(&forged).expect("json")).await;
    let replayed = UpdateBatch {
        seq: 1,
        kid: String::new(),
        changes: vec![change(greens[3], Color::Red)],
        signature: String::new(),
    }
    .sign(auth_kid, &auth_key)
    .expect("sign");
    inject(&nats, "updates", serde_json::to_vec(&replayed).expect("json")).await;
    inject(&nats, "updates", b"not a batch".to_vec()).await;
    for t in [&a, &b, &c] {
        eventually("every replica refused them", || async move {
            let m = t.metrics().await;
            ["unauthenticated", "replay", "malformed"]
                .iter()
                .all(|r| m.contains(&format!("healthgate_cluster_refused_total{{reason=\"{r}\"}} 1")))
        })
        .await;
        assert_eq!(t.color_of(greens[3]).await, "green");
    }
    // A byte-identical copy of an applied batch (what a replica publishes
    // again after the stream lost messages) is skipped as a duplicate, not
    // refused; any other old sequence above stays refused.
    let first = {
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
        let st = js.get_stream("HG_ORDER").await.expect("order stream");
        st.get_raw_message(1).await.expect("batch 1 is message 1").payload
    };
    inject(&nats, "updates", first.to_vec()).await;
    for t in [&a, &b, &c] {
        eventually("every replica skipped the copy", || async move {
            t.metrics().await.contains("healthgate_cluster_duplicate_batches_total 1")
        })
        .await;
        let m = t.metrics().await;
        assert!(m.contains("healthgate_cluster_refused_total{reason=\"replay\"} 1"), "{m}");
    }
    // And a real batch after them still lands everywhere.
    let (s, v) = c.push(2, vec![change(greens[3], Color::Yellow)]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    converge(&[&a, &b, &c]).await;
    assert_eq!(a.color_of(greens[3]).await, "yellow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_replica_and_a_late_joiner_converge() {
    let nats = NatsServer::start();
    let d = Deployment::new();
    let a = d.replica("a", &nats).await;
    let b = d.replica("b", &nats).await;
    let greens = a.greens(40);
    let metro = a.checkpoint("metro").to_owned();
    let rail = a.checkpoint("rail").to_owned();
    for (i, h) in greens.iter().enumerate().take(20) {
        let t = if i % 2 == 0 { &a } else { &b };
        t.scan(&t.code(*h), &metro, "in", None).await;
    }
    assert_eq!(a.push(1, vec![change(greens[30], Color::Red)]).await.0, StatusCode::OK);
    a.scan(&a.code(greens[31]), &rail, "in", Some(39.0)).await;
    // B restarts (its last snapshot and cluster positions, then the streams).
    let b = b.restart().await;
    for (i, h) in greens.iter().enumerate().skip(20).take(10) {
        let t = if i % 2 == 0 { &a } else { &b };
        t.scan(&t.code(*h), &metro, "in", None).await;
    }
    assert_eq!(b.push(2, vec![change(greens[32], Color::Yellow)]).await.0, StatusCode::OK);
    // C joins late and reads both streams from the start.
    let c = d.replica("c", &nats).await;
    converge(&[&a, &b, &c]).await;
    assert_eq!(c.color_of(greens[30]).await, "red");
    assert_eq!(c.color_of(greens[31]).await, "yellow");
    // Cluster-wide tracing on the late joiner: every scan at metro.
    let (s, lines) = c.admin_lines(&format!("/v1/admin/visits?checkpoint={metro}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(lines.len(), 30, "{lines:?}");
}

/// Regression: a replica killed while it created another replica's tracing
/// index left a file that could not be opened, and it refused to start
/// ("tracing index of node b: ... invalid data"). The damaged index is set
/// aside and rebuilt by reading the records stream again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_remote_tracing_index_is_set_aside_and_rebuilt_from_the_records_stream() {
    let nats = NatsServer::start();
    let d = Deployment::new();
    let a = d.replica("a", &nats).await;
    let b = d.replica("b", &nats).await;
    let metro = a.checkpoint("metro").to_owned();
    for h in a.greens(12) {
        a.scan(&a.code(h), &metro, "in", None).await;
    }
    let query = format!("/v1/admin/visits?checkpoint={metro}");
    eventually("b answers for a's scans", || async { b.admin_lines(&query).await.1.len() == 12 }).await;
    let b = b
        .restart_after(|dir| {
            let index = dir.join("data/cluster/visits-a.redb");
            assert!(index.exists(), "b keeps a's registrations in {}", index.display());
            std::fs::write(&index, b"not a redb file: torn at creation").unwrap();
        })
        .await;
    eventually("b rebuilt a's index from the stream", || async {
        let (s, lines) = b.admin_lines(&query).await;
        s == StatusCode::OK && lines.len() == 12
    })
    .await;
    let aside = std::fs::read_dir(b.dir.path().join("data/cluster"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("visits-a.redb.damaged-"));
    assert!(aside, "the damaged index is kept aside for a look");
    let rebuilds = b
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("healthgate_index_rebuilds_total ").map(|v| v.trim().parse::<f64>().unwrap()));
    assert_eq!(rebuilds, Some(1.0));
    converge(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_keep_serving_while_nats_is_away_and_converge_after() {
    let mut nats = NatsServer::start();
    let d = Deployment::new();
    let a = d.replica("a", &nats).await;
    let b = d.replica("b", &nats).await;
    let greens = a.greens(10);
    let metro = a.checkpoint("metro").to_owned();
    let rail = a.checkpoint("rail").to_owned();
    nats.stop(false);
    eventually("A sees NATS gone", || async { readyz(&a).await.1["cluster"]["connected"] == false }).await;
    // Still ready and serving from what it holds; authority posts wait.
    assert_eq!(readyz(&a).await.0, StatusCode::OK);
    assert_eq!(a.scan(&a.code(greens[0]), &rail, "in", Some(38.9)).await.short(), "deny/fever/yellow");
    for h in &greens[1..6] {
        assert_eq!(b.scan(&b.code(*h), &metro, "in", None).await.decision, "pass");
    }
    let (s, _) = a.push(1, vec![change(greens[7], Color::Red)]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(b.color_of(greens[0]).await, "green", "B cannot know yet");
    eventually("the shipper's backlog shows", || async {
        readyz(&b).await.1["cluster"]["shipper"]["backlog"].as_u64().unwrap_or(0) > 0
    })
    .await;
    nats.restart();
    converge(&[&a, &b]).await;
    assert_eq!(b.color_of(greens[0]).await, "yellow");
    let (s, lines) = a.admin_lines(&format!("/v1/admin/visits?checkpoint={metro}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(lines.len(), 5, "B's scans while NATS was away reached A's tracing answer");
    assert_eq!(a.push(1, vec![change(greens[7], Color::Red)]).await.0, StatusCode::OK);
    eventually("the batch lands on B", || async { b.color_of(greens[7]).await == "red" }).await;
}

/// The real binary: a bad `[cluster]` section is refused before anything
/// binds (exit 64, naming the field); an unreachable NATS is a clear error
/// at start (exit 1).
#[test]
fn bad_cluster_config_exits_64_and_unreachable_nats_exits_1() {
    let d = Deployment::new();
    let text = std::fs::read_to_string(&d.env.config).expect("config");
    let run = |extra: &str| {
        std::fs::write(&d.env.config, format!("{text}\n{extra}")).expect("config");
        std::process::Command::new(healthgate_tests::healthgate_bin())
            .args(["serve", "--config"])
            .arg(&d.env.config)
            .output()
            .expect("run healthgate")
    };
    let o = run("[cluster]\nnode = \"a.b\"\nnats_url = \"nats://127.0.0.1:4222\"\n");
    assert_eq!(o.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cluster.node"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run("[cluster]\nnode = \"a\"\nnats_url = \"http://127.0.0.1:4222\"\n");
    assert_eq!(o.status.code(), Some(64));
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let o =
        run(&format!("[cluster]\nnode = \"a\"\nnats_url = \"nats://127.0.0.1:{port}\"\nconnect_timeout_ms = 500\n"));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot reach NATS"), "{err}");
}

/// nats-server is SIGKILLed in the middle of traffic (JetStream may lose
/// what it acknowledged but had not written yet) and restarted on its
/// store: the replicas' logs make up for it. Afterwards both replicas agree
/// holder by holder, every acknowledged scan is in both cluster-wide
/// tracing answers, and the authority batch acknowledged just before the
/// kill is in force on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_killed_and_restarted_loses_nothing_acknowledged() {
    let mut nats = NatsServer::start();
    let d = Deployment::new();
    let a = d.replica("a", &nats).await;
    let b = d.replica("b", &nats).await;
    let greens = a.greens(90);
    let metro = a.checkpoint("metro").to_owned();
    let rail = a.checkpoint("rail").to_owned();
    let mut acked = 0;
    for (i, h) in greens.iter().enumerate().take(40) {
        let t = if i % 2 == 0 { &a } else { &b };
        assert_eq!(t.scan(&t.code(*h), &metro, "in", None).await.decision, "pass");
        acked += 1;
    }
    assert_eq!(a.push(1, vec![change(greens[85], Color::Red)]).await.0, StatusCode::OK);
    assert_eq!(b.scan(&b.code(greens[86]), &rail, "in", Some(38.6)).await.short(), "deny/fever/yellow");
    nats.stop(true);
    for (i, h) in greens.iter().enumerate().skip(40).take(20) {
        let t = if i % 2 == 0 { &a } else { &b };
        assert_eq!(t.scan(&t.code(*h), &metro, "in", None).await.decision, "pass");
        acked += 1;
    }
    nats.restart();
    for (i, h) in greens.iter().enumerate().skip(60).take(20) {
        let t = if i % 2 == 0 { &a } else { &b };
        assert_eq!(t.scan(&t.code(*h), &metro, "in", None).await.decision, "pass");
        acked += 1;
    }
    converge(&[&a, &b]).await;
    for t in [&a, &b] {
        assert_eq!(t.color_of(greens[85]).await, "red");
        assert_eq!(t.color_of(greens[86]).await, "yellow");
        let path = format!("/v1/admin/visits?checkpoint={metro}");
        let path = &path;
        eventually("every acknowledged scan is in the cluster-wide answer", || async move {
            let (s, lines) = t.admin_lines(path).await;
            s == StatusCode::OK && lines.len() == acked
        })
        .await;
    }
}

/// The value of a metric line that starts with `name` (labels included).
fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0)
}

/// nats-server SIGKILLed, and restarted without what it had not written to
/// disk: here all of both streams' messages (their files are removed while
/// it is down, which is what nats-server 2.9 can lose of a young stream,
/// made certain), so the restarted streams give the old sequences to new
/// messages. One replica is down through it all and starts again on
/// positions saved before. Every replica ends with exactly the acknowledged
/// batches (and revocations) in force and the same state holder by holder;
/// a replica joining afterwards, which can only read the rebuilt streams,
/// ends the same (the replicas published again what the streams lost); and
/// the cluster takes new batches after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_killed_losing_its_streams_every_replica_ends_with_exactly_the_acknowledged_batches() {
    let mut nats = NatsServer::start();
    let d = Deployment::new();
    let a = d.replica("a", &nats).await;
    let b = d.replica("b", &nats).await;
    let c = d.replica("c", &nats).await;
    let greens = a.greens(60);
    let metro = a.checkpoint("metro").to_owned();
    let rail = a.checkpoint("rail").to_owned();
    let revocation =
        |h: HolderId| vec![healthgate::feed::Revocation { target: healthgate::feed::Target::Holder(h), expires: None }];
    // Batches 1-4, passes and a fever, over all three.
    let mut updates: Vec<(HolderId, Color)> = Vec::new();
    for seq in 1..=4u64 {
        let t = [&a, &b, &c][seq as usize % 3];
        let (h, color) = (greens[40 + seq as usize], if seq % 2 == 0 { Color::Red } else { Color::Yellow });
        assert_eq!(t.push(seq, vec![change(h, color)]).await.0, StatusCode::OK);
        updates.push((h, color));
    }
    for (i, h) in greens.iter().enumerate().take(12) {
        let t = [&a, &b, &c][i % 3];
        assert_eq!(t.scan(&t.code(*h), &metro, "in", None).await.decision, "pass");
    }
    assert_eq!(b.scan(&b.code(greens[20]), &rail, "in", Some(38.8)).await.short(), "deny/fever/yellow");
    converge(&[&a, &b, &c]).await;
    // C stops here (its positions, ids and batches saved with its last
    // snapshot) and stays down until after the loss.
    let (c_dir, c_env, c_clock) = c.stop_keeping_data().await;
    assert_eq!(a.revoke(5, revocation(greens[50])).await.0, StatusCode::OK);
    assert_eq!(b.push(6, vec![change(greens[46], Color::Red)]).await.0, StatusCode::OK);
    updates.push((greens[46], Color::Red));
    assert_eq!(a.scan(&a.code(greens[21]), &rail, "in", Some(39.1)).await.short(), "deny/fever/yellow");
    for (i, h) in greens.iter().enumerate().skip(12).take(6) {
        let t = if i % 2 == 0 { &a } else { &b };
        assert_eq!(t.scan(&t.code(*h), &metro, "in", None).await.decision, "pass");
    }
    eventually("A and B applied batch 6", || async {
        digest(&a).await["feed_seq"] == 6 && digest(&b).await["feed_seq"] == 6
    })
    .await;

    nats.stop(true);
    assert!(nats.lose_stream_messages() > 0, "nothing to lose in {}", nats.store().display());
    nats.restart();
    let c = TestGateway::start_in(c_dir, c_env, c_clock).await;
    converge(&[&a, &b, &c]).await;
    for t in [&a, &b] {
        let m = t.metrics().await;
        assert!(
            metric(&m, "healthgate_cluster_refused_total{reason=\"stream_rewound\"}") >= 1.0,
            "{} did not notice the lost messages",
            t.env.admin_url
        );
    }
    let late = d.replica("d", &nats).await;
    converge(&[&a, &b, &c, &late]).await;
    for t in [&a, &b, &c, &late] {
        assert_eq!(digest(t).await["feed_seq"], 6);
        for (h, color) in &updates {
            assert_eq!(t.color_of(*h).await, color.as_str());
        }
        assert_eq!(t.color_of(greens[20]).await, "yellow");
        assert_eq!(t.color_of(greens[21]).await, "yellow");
        // The revoked holder is denied, and no other holder is touched.
        assert_eq!(t.scan(&t.code(greens[50]), &metro, "in", None).await.decision, "deny");
        assert_eq!(t.color_of(greens[51]).await, "green");
    }
    // Every registration reached every replica's cluster-wide answer.
    let query = format!("/v1/admin/visits?checkpoint={metro}");
    for t in [&a, &b, &c, &late] {
        let query = &query;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (s, lines) = t.admin_lines(query).await;
            // The denials of the revocation checks above are registered too.
            let passes = lines.iter().filter(|l| l["decision"] == "pass").count();
            if s == StatusCode::OK && passes == 18 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {passes} passes in the cluster-wide answer: {lines:?}",
                t.env.admin_url
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The cluster goes on: a new batch lands everywhere.
    assert_eq!(c.push(7, vec![change(greens[47], Color::Red)]).await.0, StatusCode::OK);
    for t in [&a, &b, &c, &late] {
        let h = greens[47];
        eventually("batch 7 is in force", || async move { t.color_of(h).await == "red" }).await;
    }
}
