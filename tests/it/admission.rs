//! Priority admission through the API: under overload the lower classes are
//! refused first, scans past the queueing budget get a fast 503
//! `overloaded`, every refusal carries `Retry-After` and a JSON reason and
//! is counted by class, and the admin listener's health and metrics take no
//! slot at all.
//!
//! Overload is made deterministic by holding slots through the gateway's
//! own admission (as scans in progress would), never by timing.

use bytes::Bytes;
use healthgate::gateway::admission::Class;
use healthgate::operations::auth::Role;
use healthgate_tests::TestGateway;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

/// Status, `Retry-After` and JSON body of one request.
async fn call(
    t: &TestGateway,
    method: Method,
    url: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut req = Request::builder().method(method).uri(format!("{url}{path}"));
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let resp = t.http.request(req.body(Full::new(Bytes::from(body))).unwrap()).await.expect("http");
    let status = resp.status();
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, retry, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// (class, method, listener URL, path, key, JSON body).
type Call = (&'static str, Method, String, String, Option<String>, Option<Value>);

fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} is not exported"))
}

fn with(settings: &'static str) -> healthgate_tests::ConfigEdit {
    Box::new(move |c| c.replace("[server]\n", &format!("[server]\n{settings}\n")))
}

#[tokio::test]
async fn under_load_lower_classes_are_refused_first_and_scans_still_come_in() {
    // A large budget: the scan below must not be refused for the machine's
    // lateness while a slot is held; the lower classes are shed by slots.
    let t = TestGateway::start_with(with("max_in_flight = 2\nscan_queue_budget_ms = 1000")).await;
    // Idle: every class is served, and nothing is counted as refused.
    let inspector = t.key(Role::Inspector).to_owned();
    let public = t.env.public_url.clone();
    let status_path = format!("/v1/holders/{}", t.holder("green", 0));
    assert_eq!(call(&t, Method::GET, &public, &status_path, Some(&inspector), None).await.0, StatusCode::OK);

    // One scan in progress: half the slots are taken.
    let held = t.gw.admission().admit(Class::Scan).await.expect("a free slot");
    let checkin = json!({ "code": t.code(t.holder("green", 1)), "temperature_c": 36.6 });
    let authority = t.key(Role::Authority).to_owned();
    let admin = t.env.admin_url.clone();
    let lower: Vec<Call> = vec![
        ("status", Method::GET, public.clone(), status_path.clone(), Some(inspector.clone()), None),
        ("checkin", Method::POST, public.clone(), "/v1/checkins".into(), None, Some(checkin)),
        ("export", Method::GET, public.clone(), "/v1/revocations/filter".into(), Some(inspector.clone()), None),
        ("inspector", Method::GET, public.clone(), "/inspect/".into(), None, None),
        ("inspector", Method::GET, public.clone(), "/v1/checkpoints".into(), Some(inspector.clone()), None),
        (
            "tracing",
            Method::GET,
            admin.clone(),
            format!("/v1/admin/visits?checkpoint={}", t.checkpoint("metro")),
            Some(authority.clone()),
            None,
        ),
    ];
    for (class, method, url, path, key, body) in &lower {
        let (s, retry, v) = call(&t, method.clone(), url, path, key.as_deref(), body.clone()).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{class} {path}: {v}");
        assert_eq!(retry.as_deref(), Some("1"), "{class} {path}");
        assert_eq!(v["reason"], "shed", "{class} {path}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| e.starts_with("shed")), "{v}");
    }
    // The refused check-in changed nothing: the holder can still check in.
    // Scans still come in, and the admin listener's health and metrics
    // take no slot.
    let metro = t.checkpoint("metro").to_owned();
    assert_eq!(t.scan(&t.code(t.holder("green", 2)), &metro, "in", None).await.short(), "pass/ok/green");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(t.get(&admin, path, None).await.0, StatusCode::OK);
    }
    let m = t.metrics().await;
    for (class, n) in [("status", 1), ("checkin", 1), ("export", 1), ("inspector", 2), ("tracing", 1)] {
        assert_eq!(sample(&m, &format!("healthgate_refused_requests_total{{class=\"{class}\",reason=\"shed\"}}")), n);
    }
    assert_eq!(sample(&m, "healthgate_refused_requests_total{class=\"scan\",reason=\"overloaded\"}"), 0);
    assert_eq!(sample(&m, "healthgate_in_flight_requests"), 1);

    // Load gone: the lower classes are served again, the check-in too.
    drop(held);
    for (class, method, url, path, key, body) in lower {
        let (s, _, v) = call(&t, method, &url, &path, key.as_deref(), body).await;
        assert!(s.is_success() || s == StatusCode::PERMANENT_REDIRECT, "{class} {path}: {s} {v}");
    }
}

#[tokio::test]
async fn a_scan_past_the_queueing_budget_gets_a_fast_overloaded_503_and_changes_nothing() {
    let t = TestGateway::start_with(with("max_in_flight = 1\nscan_queue_budget_ms = 20")).await;
    let held = t.gw.admission().admit(Class::Scan).await.expect("the one slot");
    let holder = t.holder("green", 0);
    let metro = t.checkpoint("metro").to_owned();
    let epoch = t.gw.store().epoch();
    let key = t.key(Role::Turnstile).to_owned();
    let body = json!({ "code": t.code(holder), "checkpoint": metro, "direction": "in" });
    let (s, retry, v) = call(&t, Method::POST, &t.env.public_url, "/v1/scan", Some(&key), Some(body)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(v["reason"], "overloaded", "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.starts_with("overloaded")), "{v}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(2), "{v}");
    let m = t.metrics().await;
    assert_eq!(sample(&m, "healthgate_refused_requests_total{class=\"scan\",reason=\"overloaded\"}"), 1);
    assert_eq!(sample(&m, "healthgate_rejected_requests_total{status=\"503\"}"), 1);

    // Nothing moved: once the slot is free the same holder enters (an
    // anti-passback record from the refused scan would deny the entry).
    drop(held);
    assert_eq!(t.gw.store().epoch(), epoch);
    assert_eq!(t.scan(&t.code(holder), &metro, "in", None).await.short(), "pass/ok/green");
}

#[tokio::test]
async fn scans_over_the_configured_rate_cap_get_a_fast_overloaded_503_and_change_nothing() {
    // One scan a second (a burst of one): the second scan within the second
    // is over the cap, though every slot is free.
    let t = TestGateway::start_with(with("max_scan_rate = 1")).await;
    let metro = t.checkpoint("metro").to_owned();
    let key = t.key(Role::Turnstile).to_owned();
    assert_eq!(t.scan(&t.code(t.holder("green", 0)), &metro, "in", None).await.short(), "pass/ok/green");
    let holder = t.holder("green", 1);
    let epoch = t.gw.store().epoch();
    let body = json!({ "code": t.code(holder), "checkpoint": metro, "direction": "in" });
    let (s, retry, v) = call(&t, Method::POST, &t.env.public_url, "/v1/scan", Some(&key), Some(body)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(v["reason"], "overloaded", "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.starts_with("overloaded") && e.contains("rate")), "{v}");
    // Counted apart from the scans past the queueing budget, so that an
    // operator tells a cap that bites from a full gateway.
    let m = t.metrics().await;
    assert_eq!(sample(&m, "healthgate_refused_requests_total{class=\"scan\",reason=\"over_rate\"}"), 1);
    assert_eq!(sample(&m, "healthgate_refused_requests_total{class=\"scan\",reason=\"overloaded\"}"), 0);
    // The cap is on scans alone: a holder lookup is served.
    let inspector = t.key(Role::Inspector).to_owned();
    let status_path = format!("/v1/holders/{holder}");
    assert_eq!(call(&t, Method::GET, &t.env.public_url, &status_path, Some(&inspector), None).await.0, StatusCode::OK);
    // Nothing moved; a second later the same holder enters.
    assert_eq!(t.gw.store().epoch(), epoch);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(t.scan(&t.code(holder), &metro, "in", None).await.short(), "pass/ok/green");
}

/// The real binary: a rate cap beyond reason is refused at start (exit
/// 64, naming the field).
#[tokio::test]
async fn a_rate_cap_beyond_reason_is_refused_at_start() {
    let t = TestGateway::start().await;
    let text = std::fs::read_to_string(&t.env.config).expect("config");
    let bad = t.env.config.with_file_name("bad-rate.toml");
    std::fs::write(&bad, text.replace("[server]\n", "[server]\nmax_scan_rate = 10000001\n")).expect("config");
    let o = std::process::Command::new(healthgate_tests::healthgate_bin())
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .expect("run healthgate");
    assert_eq!(o.status.code(), Some(64));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("server.max_scan_rate"), "{err}");
}
