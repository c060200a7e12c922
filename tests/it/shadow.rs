//! Shadow rules: a candidate policy is decided beside the live one, with no
//! effect; its disagreements show in the metrics; promoting it is a reload.

use healthgate::operations::auth::Role;
use healthgate_tests::TestGateway;
use http::{Method, StatusCode};

const METRO_GREEN: &str = "[classes.metro]\nadmit = [\"green\"]";
const METRO_YELLOW: &str = "[classes.metro]\nadmit = [\"green\", \"yellow\"]";

/// The value of one sample line of `/metrics`, 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

async fn reload(t: &TestGateway) -> (StatusCode, serde_json::Value) {
    let op = t.key(Role::Operator).to_owned();
    t.request(Method::POST, &t.env.admin_url, "/v1/admin/reload", Some(&op), None).await
}

#[tokio::test]
async fn a_candidate_policy_is_counted_never_applied_and_promoted_by_a_reload() {
    let t = TestGateway::start().await;
    let (yellow, green) = (t.holder("yellow", 0), t.holder("green", 1));
    let metro = "wuhan-metro-wuchang-1";
    let path = t.config.path.clone();
    let live = std::fs::read_to_string(&path).unwrap();
    assert!(live.contains(METRO_GREEN));

    // The candidate: the live policy's sections, with metro admitting yellow.
    let policy_part = &live[live.find("[regions.wuhan]").unwrap()..];
    std::fs::write(path.with_file_name("candidate.toml"), policy_part.replace(METRO_GREEN, METRO_YELLOW)).unwrap();
    std::fs::write(&path, format!("candidate_policy = \"candidate.toml\"\n{live}")).unwrap();
    let (s, v) = reload(&t).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // The live rules decide; the candidate only counts.
    assert_eq!(t.scan(&t.code(yellow), metro, "in", None).await.short(), "deny/not_green/yellow");
    assert_eq!(t.scan(&t.code(yellow), metro, "in", None).await.short(), "deny/not_green/yellow");
    assert_eq!(t.scan(&t.code(green), metro, "in", None).await.short(), "pass/ok/green");
    let m = t.metrics().await;
    assert_eq!(sample(&m, "healthgate_shadow_active"), 1.0);
    assert_eq!(sample(&m, "healthgate_shadow_scans_total"), 3.0);
    assert_eq!(sample(&m, "healthgate_shadow_disagreements_total{candidate=\"ok\",live=\"not_green\"}"), 2.0, "{m}");
    // No effect of the candidate: the yellow holder did not enter (a pass
    // under the candidate would have set anti-passback).
    let insp = t.key(Role::Inspector).to_owned();
    let (_, status) = t.get(&t.env.public_url, &format!("/v1/holders/{yellow}"), Some(&insp)).await;
    assert_eq!(status["inside"], false, "{status}");

    // A candidate that cannot decide at a live checkpoint is refused whole.
    let partial = policy_part.replace("id = \"wuhan-metro-wuchang-1\"", "id = \"somewhere-else\"");
    std::fs::write(path.with_file_name("candidate.toml"), partial).unwrap();
    let (s, v) = reload(&t).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("wuhan-metro-wuchang-1"), "{v}");
    assert_eq!(sample(&t.metrics().await, "healthgate_shadow_active"), 1.0, "the running candidate stays");

    // Promotion: the candidate's rule goes live, the candidate line goes.
    std::fs::write(&path, live.replace(METRO_GREEN, METRO_YELLOW)).unwrap();
    let (s, v) = reload(&t).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(t.scan(&t.code(yellow), metro, "in", None).await.short(), "pass/ok/yellow");
    let m = t.metrics().await;
    assert_eq!(sample(&m, "healthgate_shadow_active"), 0.0);
    assert_eq!(sample(&m, "healthgate_shadow_scans_total"), 3.0, "no candidate, no shadow decision");
}
