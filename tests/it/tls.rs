//! HTTPS: a listener named in `[tls]` serves the configured certificate,
//! the CLI's client speaks it with the operator's CA, plain HTTP is not
//! answered there, and a renewed certificate is served after a reload.

use healthgate::operations::auth::Role;
use healthgate::operations::client::{ApiClient, ClientError};
use healthgate::operations::tls;
use healthgate::SystemClock;
use healthgate_tests::TestGateway;
use http::{Method, StatusCode};
use std::path::{Path, PathBuf};

fn write_certs(dir: &Path, tag: &str, days: i64) -> PathBuf {
    let now = healthgate::Clock::now(&SystemClock) as i64;
    let (ca, cert, key) = tls::generate(&["localhost", "127.0.0.1"], now, days).unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let ca_path = dir.join(format!("ca-{tag}.pem"));
    std::fs::write(&ca_path, ca).unwrap();
    ca_path
}

fn expiry(metrics: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("healthgate_tls_cert_expiry_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the expiry gauge")
}

#[tokio::test]
async fn the_public_listener_serves_https_and_renews_its_certificate_on_reload() {
    let certs = tempfile::tempdir().unwrap();
    let ca1 = write_certs(certs.path(), "1", 30);
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let section = format!("\n[tls]\ncert = {cert:?}\nkey = {key:?}\nlisteners = [\"public\"]\n");
    let t = TestGateway::start_with(Box::new(move |c| c + &section)).await;
    let https = t.env.public_url.replace("http://", "https://");
    let turnstile = t.key(Role::Turnstile).to_owned();
    let body = |t: &TestGateway| {
        serde_json::json!({ "code": t.code(t.holder("green", 0)), "checkpoint": t.checkpoint("metro"), "direction": "out" })
            .to_string()
            .into_bytes()
    };

    let client = ApiClient::new(&https, &turnstile, Some(&ca1)).unwrap();
    let (s, v) = client.request(Method::POST, "/v1/scan", Some(body(&t))).await.unwrap();
    assert_eq!((s, v["decision"].as_str()), (StatusCode::OK, Some("pass")), "{v}");
    // Plain HTTP on the TLS port gets no answer; https with no CA is refused
    // before anything is sent.
    let plain = ApiClient::new(&t.env.public_url, &turnstile, None).unwrap();
    assert!(plain.request(Method::POST, "/v1/scan", Some(body(&t))).await.is_err());
    assert!(matches!(ApiClient::new(&https, &turnstile, None), Err(ClientError::NoCa(_))));
    let first_expiry = expiry(&t.metrics().await);

    // Renewal: new files (from another CA), a reload, and the next handshake
    // serves them: the old CA no longer verifies, the new one does.
    let ca2 = write_certs(certs.path(), "2", 90);
    let op = t.key(Role::Operator).to_owned();
    let (s, v) = t.request(Method::POST, &t.env.admin_url, "/v1/admin/reload", Some(&op), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let old = ApiClient::new(&https, &turnstile, Some(&ca1)).unwrap();
    assert!(old.request(Method::GET, "/healthz", None).await.is_err(), "the renewed certificate is not the old CA's");
    let new = ApiClient::new(&https, &turnstile, Some(&ca2)).unwrap();
    let (s, _) = new.request(Method::GET, "/healthz", None).await.unwrap();
    assert_eq!(s, StatusCode::OK);
    let renewed = expiry(&t.metrics().await);
    assert!(renewed > first_expiry + 59 * 86_400, "{first_expiry} -> {renewed}");

    // A key that does not match the certificate is refused; the running
    // certificate stays.
    let other = tls::generate(&["localhost"], healthgate::Clock::now(&SystemClock) as i64, 10).unwrap();
    std::fs::write(&key, other.2).unwrap();
    let (s, v) = t.request(Method::POST, &t.env.admin_url, "/v1/admin/reload", Some(&op), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("key.pem"), "{v}");
    assert_eq!(new.request(Method::GET, "/healthz", None).await.unwrap().0, StatusCode::OK);
}
