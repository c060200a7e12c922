//! The metrics an operator watches, read through `GET /metrics` the way
//! Prometheus reads them: feed position and age, reloads, connection limits,
//! the log and the index, build information, and series that exist before
//! anything happened (so that rules and dashboards never see nothing).

use healthgate::feed::Change;
use healthgate::operations::auth::Role;
use healthgate::Color;
use healthgate_tests::TestGateway;
use http::{Method, StatusCode};

/// The value of the sample named exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    let line = text.lines().find_map(|l| l.strip_prefix(&prefix));
    line.unwrap_or_else(|| panic!("no sample {series} in the scrape")).trim().parse().expect("a number")
}

#[tokio::test]
async fn feed_position_and_age_follow_batches_and_survive_a_restart_from_the_log() {
    let t = TestGateway::start().await;
    let m = t.metrics().await;
    assert_eq!(sample(&m, "healthgate_feed_last_batch_timestamp_seconds"), 0.0);
    assert_eq!(sample(&m, "healthgate_feed_batches_total{kind=\"updates\",result=\"replay\"}"), 0.0);

    t.clock.advance(120);
    let pushed_at = t.now();
    let change = Change { holder: t.holder("green", 0), color: Color::Red, steps: vec![] };
    assert_eq!(t.push(7, vec![change.clone()]).await.0, StatusCode::OK);
    // A replayed batch changes neither the position nor the age.
    t.clock.advance(60);
    assert_eq!(t.push(7, vec![change]).await.0, StatusCode::CONFLICT);
    let m = t.metrics().await;
    assert_eq!(sample(&m, "healthgate_feed_last_sequence"), 7.0);
    assert_eq!(sample(&m, "healthgate_feed_last_batch_timestamp_seconds"), pushed_at as f64);
    assert_eq!(sample(&m, "healthgate_feed_batches_total{kind=\"updates\",result=\"applied\"}"), 1.0);
    assert_eq!(sample(&m, "healthgate_feed_batches_total{kind=\"updates\",result=\"replay\"}"), 1.0);

    // Rebuilt from the log alone, the gateway knows when the batch came.
    let t = t.restart_from_log().await;
    let m = t.metrics().await;
    assert_eq!(sample(&m, "healthgate_feed_last_sequence"), 7.0);
    assert_eq!(sample(&m, "healthgate_feed_last_batch_timestamp_seconds"), pushed_at as f64);
}

#[tokio::test]
async fn a_refused_reload_shows_until_a_good_one() {
    let t = TestGateway::start().await;
    let admin = t.env.admin_url.clone();
    let op = t.key(Role::Operator).to_owned();
    let m = t.metrics().await;
    assert_eq!(sample(&m, "healthgate_config_last_reload_successful"), 1.0);
    assert_eq!(sample(&m, "healthgate_config_reloads_total{result=\"refused\"}"), 0.0);

    let good = std::fs::read_to_string(&t.env.config).unwrap();
    std::fs::write(&t.env.config, format!("{good}\nnot_a_field = 1\n")).unwrap();
    assert_eq!(t.request(Method::POST, &admin, "/v1/admin/reload", Some(&op), None).await.0, StatusCode::BAD_REQUEST);
    let m = t.metrics().await;
    assert_eq!(sample(&m, "healthgate_config_last_reload_successful"), 0.0);
    assert_eq!(sample(&m, "healthgate_config_reloads_total{result=\"refused\"}"), 1.0);

    std::fs::write(&t.env.config, good).unwrap();
    assert_eq!(t.request(Method::POST, &admin, "/v1/admin/reload", Some(&op), None).await.0, StatusCode::OK);
    let m = t.metrics().await;
    assert_eq!(sample(&m, "healthgate_config_last_reload_successful"), 1.0);
    assert_eq!(sample(&m, "healthgate_config_reloads_total{result=\"ok\"}"), 1.0);
}

#[tokio::test]
async fn saturation_durability_and_build_series_are_there_from_the_start() {
    let t = TestGateway::start_with(Box::new(|c| {
        c.replace("[server]\n", "[server]\nmax_connections = 37\nadmin_max_connections = 5\n")
    }))
    .await;
    let m = t.metrics().await;
    // Each listener has its own cap.
    assert_eq!(sample(&m, "healthgate_connection_limit{listener=\"public\"}"), 37.0);
    assert_eq!(sample(&m, "healthgate_connection_limit{listener=\"admin\"}"), 5.0);
    for listener in ["public", "admin"] {
        assert_eq!(sample(&m, &format!("healthgate_accept_errors_total{{listener=\"{listener}\"}}")), 0.0);
    }
    for status in healthgate::operations::metrics::ERROR_STATUSES {
        assert_eq!(sample(&m, &format!("healthgate_rejected_requests_total{{status=\"{status}\"}}")), 0.0);
    }
    assert_eq!(sample(&m, "healthgate_log_failed"), 0.0);
    assert_eq!(sample(&m, "healthgate_index_failed"), 0.0);
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let build = format!(
        "healthgate_build_info{{profile=\"{profile}\",target=\"{}-{}\",version=\"{}\"}}",
        std::env::consts::ARCH,
        std::env::consts::OS,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&m, &build), 1.0);
    // The latency objective is a bucket boundary; fsync buckets reach 1 s.
    assert!(m.contains("healthgate_scan_duration_seconds_bucket{le=\"0.005\"}"));
    assert!(m.contains("healthgate_log_fsync_duration_seconds_bucket{le=\"1\"}"));

    // Scans go through the log and into the index; once a tracing query
    // has seen them, the index is not behind.
    let cp = t.checkpoint("metro").to_owned();
    for h in t.greens(5) {
        t.scan(&t.code(h), &cp, "in", None).await;
    }
    let (s, lines) = t.admin_lines(&format!("/v1/admin/visits?checkpoint={cp}")).await;
    assert_eq!((s, lines.len()), (StatusCode::OK, 5));
    let m = t.metrics().await;
    assert_eq!(sample(&m, "healthgate_index_lag_records"), 0.0);
    assert!(sample(&m, "healthgate_log_batch_records_sum") >= 5.0);
    assert!(sample(&m, "healthgate_scan_duration_seconds_count") >= 5.0);
}
