//! The inspector's page over HTTP: the page and its security headers, the
//! checkpoint list, and camera frames decoded by the gateway. The page
//! itself, in a browser, is driven by tests/browser/inspector.py.

use bytes::Bytes;
use healthgate::operations::auth::Role;
use healthgate_tests::{healthgate_bin, TestGateway};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// One request with optional key and content type; status, headers, body.
async fn call(
    t: &TestGateway,
    method: Method,
    url: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::builder().method(method).uri(url);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    if let Some(c) = content_type {
        req = req.header("content-type", c);
    }
    let resp = t.http.request(req.body(Full::new(Bytes::from(body))).unwrap()).await.expect("http");
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body.collect().await.expect("body").to_bytes())
}

fn json(b: &Bytes) -> Value {
    serde_json::from_slice(b).unwrap_or(Value::Null)
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_content_security_policy() {
    let t = TestGateway::start().await;
    let public = t.env.public_url.clone();
    let (s, h, _) = call(&t, Method::GET, &format!("{public}/inspect"), None, None, vec![]).await;
    assert_eq!(s, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(h["location"], "inspect/");

    let (s, h, body) = call(&t, Method::GET, &format!("{public}/inspect/"), None, None, vec![]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let page = String::from_utf8(body.to_vec()).unwrap();
    for (file, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        assert!(page.contains(&format!("\"{file}\"")), "the page loads {file}");
        let (s, h, body) = call(&t, Method::GET, &format!("{public}/inspect/{file}"), None, None, vec![]).await;
        assert_eq!(s, StatusCode::OK, "{file}");
        assert_eq!(h["content-type"], content_type, "{file}");
        assert!(!body.is_empty());
        assert!(h.contains_key("content-security-policy"), "{file}");
    }
    let csp = h["content-security-policy"].to_str().unwrap();
    for want in ["default-src 'self'", "script-src 'self'", "frame-ancestors 'none'", "object-src 'none'"] {
        assert!(csp.contains(want), "{csp} lacks {want}");
    }
    for never in ["unsafe-inline", "unsafe-eval", "http:", "https:", "*"] {
        assert!(!csp.contains(never), "{csp} allows {never}");
    }
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["x-frame-options"], "DENY");

    // Nothing else under /inspect/, and nothing of it on the admin listener.
    let (s, _, _) = call(&t, Method::GET, &format!("{public}/inspect/../Cargo.toml"), None, None, vec![]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = call(&t, Method::GET, &format!("{public}/inspect/secret.js"), None, None, vec![]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = call(&t, Method::GET, &format!("{}/inspect/", t.env.admin_url), None, None, vec![]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_checkpoint_list_is_for_inspectors_and_follows_the_configuration() {
    let t = TestGateway::start().await;
    let url = format!("{}/v1/checkpoints", t.env.public_url);
    let (s, _, _) = call(&t, Method::GET, &url, None, None, vec![]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for role in [Role::Turnstile, Role::Authority, Role::Operator] {
        let (s, _, _) = call(&t, Method::GET, &url, Some(t.key(role)), None, vec![]).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{role}");
    }
    let (s, _, _) = call(&t, Method::POST, &url, Some(t.key(Role::Inspector)), None, vec![]).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);

    let (s, _, body) = call(&t, Method::GET, &url, Some(t.key(Role::Inspector)), None, vec![]).await;
    assert_eq!(s, StatusCode::OK);
    let list = json(&body)["checkpoints"].as_array().cloned().unwrap_or_default();
    let mut ids: Vec<&str> = list.iter().filter_map(|c| c["id"].as_str()).collect();
    ids.sort_unstable();
    let mut want: Vec<&str> = t.env.checkpoints.values().flatten().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(ids, want);
    let find = |id: &str| list.iter().find(|c| c["id"] == id).cloned().unwrap();
    let road = find(t.checkpoint("road"));
    assert_eq!(road["class"], "road");
    assert_eq!(road["region"], "wuhan");
    assert_eq!(road["measures_temperature"], true);
    assert_eq!(road["admits"], serde_json::json!(["green"]));
    assert_eq!(road["fever_threshold_c"], 37.3);
    let clinic = find(t.checkpoint("clinic"));
    assert_eq!(clinic["admits"], serde_json::json!(["green", "yellow"]));
    assert_eq!(clinic["admits_fever"], true);
    assert_eq!(find(t.checkpoint("metro"))["measures_temperature"], false);
}

/// A frame request that must be refused: URL, key, Content-Type, body, status.
type Refusal<'a> = (String, Option<&'a str>, Option<&'a str>, Vec<u8>, StatusCode);

/// The QR image `healthgate issue --qr` writes, and the text it printed.
fn issued_png(t: &TestGateway) -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("code.png");
    let bin = healthgate_bin();
    assert!(bin.exists(), "{} is missing: build it first (`cargo build --bins`)", bin.display());
    let holder = t.holder("green", 0).to_hex();
    let out = std::process::Command::new(bin)
        .args(["issue", "--key", t.env.issuer_key.to_str().unwrap(), "--holder", &holder])
        .args(["--qr", png.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (std::fs::read(&png).unwrap(), String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

#[tokio::test]
async fn camera_frames_are_read_for_inspectors_and_change_nothing() {
    let t = TestGateway::start().await;
    let url = format!("{}/v1/inspect/decode", t.env.public_url);
    let key = t.key(Role::Inspector).to_owned();
    let epoch = t.gw.store().epoch();
    let (png, text) = issued_png(&t);

    // The PNG as written.
    let (s, _, body) = call(&t, Method::POST, &url, Some(&key), Some("image/png"), png.clone()).await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(json(&body)["code"], text.as_str());

    // What the page sends: a grey frame of a larger scene with the code in it.
    let img = image::load_from_memory(&png).unwrap().into_luma8();
    let (w, h) = (640u32, 480u32);
    let mut frame = vec![150u8; (w * h) as usize];
    for (x, y, p) in img.enumerate_pixels() {
        frame[((y + 80) * w + x + 200) as usize] = p.0[0];
    }
    let grey = format!("{url}?width={w}&height={h}");
    let octets = Some("application/octet-stream");
    let (s, _, body) = call(&t, Method::POST, &grey, Some(&key), octets, frame.clone()).await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    assert_eq!(json(&body)["code"], text.as_str());

    // No code in view is an answer, not an error.
    let (s, _, body) = call(&t, Method::POST, &grey, Some(&key), octets, vec![150u8; (w * h) as usize]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json(&body)["code"], Value::Null);

    // Refusals, each with its status and a message.
    let cases: Vec<Refusal<'_>> = vec![
        (url.clone(), None, Some("image/png"), png.clone(), StatusCode::UNAUTHORIZED),
        (url.clone(), Some(t.key(Role::Turnstile)), Some("image/png"), png.clone(), StatusCode::FORBIDDEN),
        (url.clone(), Some(t.key(Role::Authority)), Some("image/png"), png.clone(), StatusCode::FORBIDDEN),
        (url.clone(), Some(&key), Some("image/jpeg"), png.clone(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (url.clone(), Some(&key), None, png.clone(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (url.clone(), Some(&key), octets, frame.clone(), StatusCode::BAD_REQUEST),
        (format!("{url}?width=640&height=479"), Some(&key), octets, frame.clone(), StatusCode::BAD_REQUEST),
        (format!("{url}?width=x&height=480"), Some(&key), octets, frame.clone(), StatusCode::BAD_REQUEST),
        (format!("{url}?width=0&height=480"), Some(&key), octets, vec![], StatusCode::BAD_REQUEST),
        (url.clone(), Some(&key), Some("image/png"), b"not a png".to_vec(), StatusCode::BAD_REQUEST),
        (
            format!("{url}?width=1100&height=1000"),
            Some(&key),
            octets,
            vec![0; 1_100_000],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (format!("{url}?width=3000&height=1"), Some(&key), octets, vec![0; 3000], StatusCode::PAYLOAD_TOO_LARGE),
    ];
    for (u, k, ct, body, want) in cases {
        let (s, _, answer) = call(&t, Method::POST, &u, k, ct, body).await;
        assert_eq!(s, want, "{u} {ct:?}: {answer:?}");
        assert!(json(&answer)["error"].as_str().is_some_and(|m| !m.is_empty()), "{answer:?}");
    }
    let (s, _, _) = call(&t, Method::GET, &url, Some(&key), None, vec![]).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);

    // Reading a code decides nothing and records nothing.
    assert_eq!(t.gw.store().epoch(), epoch);
    let metrics = t.metrics().await;
    let scans: Vec<&str> = metrics.lines().filter(|l| l.starts_with("healthgate_scans_total{")).collect();
    assert!(!scans.is_empty() && scans.iter().all(|l| l.ends_with(" 0")), "{scans:?}");
}
