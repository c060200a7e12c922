//! Batch verification: scans that arrive together are verified together
//! (the verifier stage), and every scan still gets its own exact answer.

use healthgate::gateway::ScanRequest;
use healthgate::policy::Direction;
use healthgate_tests::TestGateway;
use std::sync::Arc;

/// Kinds of code in a mixed crowd, with the answer each must get.
const KINDS: [(&str, &str); 5] = [
    ("good", "pass/ok/green"),
    ("forged", "deny/bad_signature/unknown"),
    ("expired", "deny/expired/unknown"),
    ("untrusted", "deny/unknown_issuer/unknown"),
    ("malformed", "deny/malformed/unknown"),
];

/// A code of kind `KINDS[kind]` for `holder`.
fn code(t: &TestGateway, holder: healthgate::HolderId, kind: usize) -> String {
    let now = t.now();
    match KINDS[kind].0 {
        "good" => t.code(holder),
        "forged" => t.code_with(&t.env.forged_key.clone(), holder, now, 60),
        "expired" => t.code_with(&t.env.issuer_key.clone(), holder, now - 600, 60),
        "untrusted" => t.code_with(&t.env.untrusted_key.clone(), holder, now, 60),
        _ => "HG1:NOT-A-CODE".to_owned(),
    }
}

/// Mostly good codes, with every bad kind spread through the crowd.
fn kind_of(i: usize) -> usize {
    if i.is_multiple_of(4) {
        1 + (i / 4) % (KINDS.len() - 1)
    } else {
        0
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_scans_is_verified_by_the_stage_each_with_its_own_answer() {
    // One verifier thread: the crowd queues behind it and forms batches.
    let edit = |c: String| format!("{c}\n[verify]\nthreads = 1\nmax_batch = 32\n");
    let t = Arc::new(TestGateway::start_with(Box::new(edit)).await);
    let metro = t.checkpoint("metro").to_owned();
    let crowd: Vec<(String, usize)> =
        t.greens(160).into_iter().enumerate().map(|(i, h)| (code(&t, h, kind_of(i)), kind_of(i))).collect();
    let mut scans = tokio::task::JoinSet::new();
    for (i, (code, kind)) in crowd.iter().cloned().enumerate() {
        let (t, metro) = (t.clone(), metro.clone());
        scans.spawn(async move { (i, kind, t.scan(&code, &metro, "in", None).await.short()) });
    }
    while let Some(done) = scans.join_next().await {
        let (i, kind, got) = done.expect("scan task");
        assert_eq!(got, KINDS[kind].1, "scan {i}, a {} code", KINDS[kind].0);
    }
    // Every code that decoded went through the stage, and nothing else did.
    let verified = crowd.iter().filter(|(_, k)| KINDS[*k].0 != "malformed").count();
    let m = t.metrics().await;
    assert_eq!(metric(&m, "healthgate_verify_batch_size_sum"), verified as f64);
    let batches = metric(&m, "healthgate_verify_batch_size_count");
    assert!((1.0..=verified as f64).contains(&batches), "{batches} batches");
}

#[tokio::test]
async fn in_process_batches_answer_what_scans_one_by_one_answer() {
    let t = TestGateway::start().await;
    let metro = t.checkpoint("metro").to_owned();
    let holders = t.greens(120);
    let (alone, together) = holders.split_at(60);
    let codes = |hs: &[healthgate::HolderId]| -> Vec<String> {
        hs.iter().enumerate().map(|(i, h)| code(&t, *h, kind_of(i))).collect()
    };
    fn request<'a>(code: &'a str, metro: &'a str) -> ScanRequest<'a> {
        ScanRequest { code, checkpoint: metro, direction: Direction::In, temperature_c: None }
    }
    let short = |r: Result<(healthgate::gateway::ScanOutcome, _), _>| {
        let d = r.expect("decided").0.decision;
        format!("{}/{}/{}", d.decision_str(), d.reason.as_str(), d.color.as_str())
    };
    let live = t.gw.live();
    let alone_codes = codes(alone);
    let one_by_one: Vec<String> =
        alone_codes.iter().map(|c| short(t.gw.scan_nowait(&live, &request(c, &metro)))).collect();
    let together_codes = codes(together);
    let requests: Vec<ScanRequest<'_>> = together_codes.iter().map(|c| request(c, &metro)).collect();
    let batched: Vec<String> = t.gw.scan_many_nowait(&live, &requests).into_iter().map(short).collect();
    assert_eq!(one_by_one, batched);
    for (i, got) in batched.iter().enumerate() {
        assert_eq!(got, KINDS[kind_of(i)].1, "scan {i}");
    }
}
