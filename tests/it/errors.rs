//! Bad requests get a clear JSON error and change nothing.

use healthgate::operations::auth::Role;
use healthgate_tests::TestGateway;
use http::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn malformed_requests_are_400_and_change_nothing() {
    let t = TestGateway::start().await;
    let h = t.holder("green", 0);
    let code = t.code(h);
    let metro = t.checkpoint("metro").to_owned();
    let epoch = t.gw.store().epoch();
    let key = t.key(Role::Turnstile).to_owned();
    let url = t.env.public_url.clone();
    let bodies: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "invalid scan request"),
        (json!({ "checkpoint": metro }).to_string().into_bytes(), "missing field `code`"),
        (json!({ "code": code }).to_string().into_bytes(), "missing field `checkpoint`"),
        (json!({ "code": code, "checkpoint": "nowhere" }).to_string().into_bytes(), "unknown checkpoint"),
        (
            json!({ "code": code, "checkpoint": metro, "direction": "sideways" }).to_string().into_bytes(),
            "direction: unknown variant `sideways`",
        ),
        (json!({ "code": code, "checkpoint": metro, "temperature_c": 120 }).to_string().into_bytes(), "temperature_c"),
        (
            json!({ "code": code, "checkpoint": metro, "temperature_c": "hot" }).to_string().into_bytes(),
            "temperature_c: invalid type",
        ),
        (
            json!({ "code": code, "checkpoint": t.checkpoint("rail") }).to_string().into_bytes(),
            "temperature_c is required",
        ),
    ];
    for (body, want) in bodies {
        let (status, v) = t.request(Method::POST, &url, "/v1/scan", Some(&key), Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        let msg = v["error"].as_str().expect("an error message");
        assert!(msg.contains(want), "{msg:?} should mention {want:?}");
    }
    // Nothing moved: the holder never entered (anti-passback state unset),
    // the epoch is where it was, and a real scan still passes.
    assert_eq!(t.gw.store().epoch(), epoch);
    assert_eq!(t.scan(&code, &metro, "in", None).await.short(), "pass/ok/green");
}

#[tokio::test]
async fn oversized_body_is_413() {
    let t = TestGateway::start().await;
    let key = t.key(Role::Turnstile).to_owned();
    let big = json!({ "code": "A".repeat(5000), "checkpoint": t.checkpoint("metro") }).to_string().into_bytes();
    let (status, v) = t.request(Method::POST, &t.env.public_url.clone(), "/v1/scan", Some(&key), Some(big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(t.metrics().await.contains("healthgate_rejected_requests_total{status=\"413\"} 1"));
}

#[tokio::test]
async fn keys_and_roles() {
    let t = TestGateway::start().await;
    let body = || Some(json!({ "code": "x", "checkpoint": t.checkpoint("metro") }).to_string().into_bytes());
    let url = t.env.public_url.clone();
    let (s, v) = t.request(Method::POST, &url, "/v1/scan", None, body()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, _) = t.request(Method::POST, &url, "/v1/scan", Some("not-a-key"), body()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let authority = t.key(Role::Authority).to_owned();
    let (s, v) = t.request(Method::POST, &url, "/v1/scan", Some(&authority), body()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // Inspectors scan too (with temperatures at checkpoints).
    let inspector = t.key(Role::Inspector).to_owned();
    let (s, v) = t.request(Method::POST, &url, "/v1/scan", Some(&inspector), body()).await;
    assert_eq!((s, v["reason"].as_str()), (StatusCode::OK, Some("malformed")));
    // Holder lookups: inspector and authority only.
    let path = format!("/v1/holders/{}", t.holder("green", 0));
    let turnstile = t.key(Role::Turnstile).to_owned();
    assert_eq!(t.get(&url, &path, Some(&turnstile)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(t.get(&url, &path, None).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn holder_status_lookup() {
    let t = TestGateway::start().await;
    let url = t.env.public_url.clone();
    let key = t.key(Role::Inspector).to_owned();
    let h = t.holder("green_no_record", 0);
    let (s, v) = t.get(&url, &format!("/v1/holders/{h}"), Some(&key)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stored_color"], "green");
    assert_eq!(v["reason"], "no_health_record");
    assert!(v["last_health_record"].is_string());
    let red = t.holder("red", 0);
    let (_, v) = t.get(&url, &format!("/v1/holders/{red}"), Some(&key)).await;
    assert_eq!((v["color"].as_str(), v["reason"].as_str()), (Some("red"), Some("not_green")));
    let stranger = t.env.population.stranger(9);
    assert_eq!(t.get(&url, &format!("/v1/holders/{stranger}"), Some(&key)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(t.get(&url, "/v1/holders/xyz", Some(&key)).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let t = TestGateway::start().await;
    let url = t.env.public_url.clone();
    assert_eq!(t.get(&url, "/nope", None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(t.get(&url, "/v1/scan", None).await.0, StatusCode::METHOD_NOT_ALLOWED);
    // Metrics live on the admin listener only.
    assert_eq!(t.get(&url, "/metrics", None).await.0, StatusCode::NOT_FOUND);
}

/// `/v1/admin/holders/visits` both starts with the holder prefix and ends
/// with the visits suffix, and the two overlap: once a slicing panic.
#[tokio::test]
async fn overlapping_tracing_path_is_a_bad_request_not_a_panic() {
    let t = TestGateway::start().await;
    let (admin, key) = (t.env.admin_url.clone(), t.key(healthgate::operations::auth::Role::Authority).to_owned());
    for path in ["/v1/admin/holders/visits", "/v1/admin/holders//visits", "/v1/admin/holders/isits/visits"] {
        let (s, v) = t.get(&admin, path, Some(&key)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {v}");
    }
}

#[tokio::test]
async fn rule12_origin_fields_change_nothing() {
    let t = TestGateway::start().await;
    let metro = t.checkpoint("metro").to_owned();
    for (i, extra) in
        [json!({}), json!({ "origin": "overseas", "plate": "鄂A12345", "hukou": "elsewhere", "nationality": "FR" })]
            .into_iter()
            .enumerate()
    {
        let mut body = json!({ "code": t.code(t.holder("green", i)), "checkpoint": metro });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (s, v) = t.scan_json(body).await;
        assert_eq!((s, v["decision"].as_str(), v["reason"].as_str()), (StatusCode::OK, Some("pass"), Some("ok")));
    }
}
