//! The authority side: signed colour updates, revocations and their
//! exported filter, daily check-ins, live reload.

use healthgate::feed::{Change, Revocation, Target};
use healthgate::operations::auth::Role;
use healthgate::revocation::reader::{holder_item, ExportedFilter};
use healthgate::state::Step;
use healthgate::Color;
use healthgate_tests::TestGateway;
use http::{Method, StatusCode};
use serde_json::json;

fn change(h: healthgate::HolderId, color: Color, steps: Vec<Step>) -> Change {
    Change { holder: h, color, steps }
}

#[tokio::test]
async fn a_signed_update_is_visible_to_the_next_scan_everywhere() {
    let t = TestGateway::start().await;
    let h = t.holder("green", 0);
    let before = t.gw.store().epoch();
    let (s, v) = t.push(1, vec![change(h, Color::Red, vec![])]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["epoch"].as_u64().unwrap() > before);
    for cp in ["wuhan-metro-hankou-1", "ningbo-metro-east-1"] {
        assert_eq!(t.scan(&t.code(h), cp, "in", None).await.short(), "deny/not_green/red");
    }
    // A new holder registered by the authority can pass once green.
    let newcomer = t.env.population.stranger(77);
    assert_eq!(t.push(2, vec![change(newcomer, Color::Green, vec![])]).await.0, StatusCode::OK);
    assert_eq!(t.scan(&t.code(newcomer), t.checkpoint("rail"), "in", Some(36.4)).await.short(), "pass/ok/green");
}

#[tokio::test]
async fn scheduled_steps_turn_over() {
    let t = TestGateway::start().await;
    let h = t.holder("green", 1);
    let now = t.now();
    let day = 86_400;
    let steps =
        vec![Step { until: now + 14 * day, then: Color::Yellow }, Step { until: now + 21 * day, then: Color::Green }];
    assert_eq!(t.push(1, vec![change(h, Color::Red, steps)]).await.0, StatusCode::OK);
    assert_eq!(t.color_of(h).await, "red");
    t.clock.set(now + 14 * day);
    assert_eq!(t.color_of(h).await, "yellow");
    assert_eq!(t.scan(&t.code(h), t.checkpoint("rail"), "in", Some(36.5)).await.short(), "deny/not_green/yellow");
    t.clock.set(now + 21 * day);
    assert_eq!(t.scan(&t.code(h), t.checkpoint("rail"), "in", Some(36.5)).await.short(), "pass/ok/green");
}

#[tokio::test]
async fn refused_batches_change_nothing() {
    let t = TestGateway::start().await;
    let h = t.holder("green", 2);
    assert_eq!(t.push(10, vec![change(h, Color::Yellow, vec![])]).await.0, StatusCode::OK);
    let epoch = t.gw.store().epoch();

    // Replayed and out-of-order sequences: 409.
    let (s, v) = t.push(10, vec![change(h, Color::Red, vec![])]).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(t.push(9, vec![change(h, Color::Red, vec![])]).await.0, StatusCode::CONFLICT);

    // Forged: signed with the issuer key under the authority's key id.
    let (_, wrong) = healthgate::operations::keyfiles::read_secret(&t.env.issuer_key).unwrap();
    let forged = healthgate::feed::UpdateBatch {
        seq: 11,
        kid: String::new(),
        changes: vec![change(h, Color::Red, vec![])],
        signature: String::new(),
    }
    .sign("AUTH".parse().unwrap(), &wrong)
    .unwrap();
    let (s, v) = t.admin_post("/v1/admin/updates", serde_json::to_vec(&forged).unwrap()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    // Unsigned.
    let unsigned = json!({ "seq": 11, "kid": "AUTH", "changes": [{ "holder": h, "color": "red" }] });
    assert_eq!(t.admin_post("/v1/admin/updates", unsigned.to_string().into_bytes()).await.0, StatusCode::UNAUTHORIZED);
    // Malformed: not JSON, unknown colour, and a batch with one bad change
    // among good ones (all or nothing).
    assert_eq!(t.admin_post("/v1/admin/updates", b"{".to_vec()).await.0, StatusCode::BAD_REQUEST);
    let bad_color = json!({ "seq": 11, "kid": "AUTH", "changes": [{ "holder": h, "color": "blue" }], "signature": "" });
    assert_eq!(t.admin_post("/v1/admin/updates", bad_color.to_string().into_bytes()).await.0, StatusCode::BAD_REQUEST);
    let other = t.holder("green", 3);
    let now = t.now();
    let backwards = vec![Step { until: now + 10, then: Color::Yellow }, Step { until: now + 5, then: Color::Green }];
    let (s, v) = t.push(11, vec![change(other, Color::Red, vec![]), change(h, Color::Red, backwards)]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("changes[1].steps"));

    assert_eq!(t.gw.store().epoch(), epoch, "no refused batch moved the epoch");
    assert_eq!(t.color_of(h).await, "yellow");
    assert_eq!(t.color_of(other).await, "green", "the good half of a bad batch was not applied");
    // The refused sequence numbers were not consumed.
    assert_eq!(t.push(11, vec![change(h, Color::Green, vec![])]).await.0, StatusCode::OK);

    // Only the authority role may push.
    let op = t.key(Role::Operator).to_owned();
    let (s, _) =
        t.request(Method::POST, &t.env.admin_url.clone(), "/v1/admin/updates", Some(&op), Some(b"{}".to_vec())).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn revocation_by_holder_and_by_serial_with_expiry() {
    let t = TestGateway::start().await;
    let (a, b) = (t.holder("green", 0), t.holder("green", 1));
    let metro = t.checkpoint("metro").to_owned();
    let now = t.now();
    let (s, v) = t
        .revoke(
            1,
            vec![
                Revocation { target: Target::Holder(a), expires: Some(now + 3600) },
                Revocation { target: Target::Serial(424242), expires: None },
            ],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(t.scan(&t.code(a), &metro, "in", None).await.short(), "deny/revoked/unknown");
    // Only the revoked serial of b is refused; b's other codes pass.
    assert_eq!(t.scan(&t.code_serial(b, 424242), &metro, "in", None).await.short(), "deny/revoked/unknown");
    assert_eq!(t.scan(&t.code_serial(b, 424243), &metro, "in", None).await.short(), "pass/ok/green");
    // The holder's revocation ends with its expiry.
    t.clock.set(now + 3600);
    assert_eq!(t.scan(&t.code(a), &metro, "in", None).await.short(), "pass/ok/green");
    // Replay of the revocation batch's sequence (shared with updates).
    assert_eq!(
        t.revoke(1, vec![Revocation { target: Target::Serial(1), expires: None }]).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(t.push(1, vec![change(a, Color::Red, vec![])]).await.0, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_bloom_false_positive_never_denies_a_valid_code() {
    let t = TestGateway::start_with(Box::new(|c| {
        c.replace("filter_capacity = 100000\nfilter_fp_rate = 0.001", "filter_capacity = 1\nfilter_fp_rate = 0.5")
    }))
    .await;
    let revoked: Vec<_> =
        (0..20).map(|i| Revocation { target: Target::Holder(t.env.population.stranger(i)), expires: None }).collect();
    assert_eq!(t.revoke(1, revoked).await.0, StatusCode::OK);
    let metro = t.checkpoint("metro").to_owned();
    for i in 0..40 {
        let h = t.env.population.holder(i);
        if t.env.population.color(i) != Color::Green {
            continue;
        }
        assert_eq!(t.scan(&t.code(h), &metro, "out", None).await.short(), "pass/ok/green");
    }
    let m = t.metrics().await;
    let fps: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("healthgate_revocation_filter_false_positives_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(fps > 0, "the saturated filter produced no false positive to test with");
}

#[tokio::test]
async fn the_exported_filter_has_an_etag_and_a_documented_format() {
    let t = TestGateway::start().await;
    let key = t.key(Role::Inspector).to_owned();
    let url = t.env.public_url.clone();
    let h = t.holder("red", 0);
    assert_eq!(t.revoke(5, vec![Revocation { target: Target::Holder(h), expires: None }]).await.0, StatusCode::OK);

    let raw = |inm: Option<&str>| {
        let mut req = http::Request::builder()
            .uri(format!("{url}/v1/revocations/filter"))
            .header("authorization", format!("Bearer {key}"));
        if let Some(v) = inm {
            req = req.header("if-none-match", v);
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::new())).unwrap();
        let http = t.http.clone();
        async move {
            use http_body_util::BodyExt;
            let r = http.request(req).await.unwrap();
            let status = r.status();
            let etag = r.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
            (status, etag, r.into_body().collect().await.unwrap().to_bytes())
        }
    };
    let (s, etag, body) = raw(None).await;
    assert_eq!(s, StatusCode::OK);
    let etag = etag.expect("an ETag");
    let f = ExportedFilter::parse(&body).expect("documented format");
    assert!(f.may_contain(&holder_item(&h.0)));
    assert_eq!(etag, format!("\"{}\"", f.version));
    let (s, _, body) = raw(Some(&etag)).await;
    assert_eq!((s, body.len()), (StatusCode::NOT_MODIFIED, 0));
    // A new revocation makes a new version.
    assert_eq!(t.revoke(6, vec![Revocation { target: Target::Serial(1), expires: None }]).await.0, StatusCode::OK);
    assert_eq!(raw(Some(&etag)).await.0, StatusCode::OK);
    // A key of some role is needed.
    assert_eq!(t.get(&url, "/v1/revocations/filter", None).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn daily_checkins() {
    let t = TestGateway::start().await;
    let url = t.env.public_url.clone();
    let h = t.holder("green_no_record", 0);
    let metro = t.checkpoint("metro").to_owned();
    let checkin = |code: String, temp: f64, symptoms: Vec<&str>| {
        let body = json!({ "code": code, "temperature_c": temp, "symptoms": symptoms }).to_string().into_bytes();
        let url = url.clone();
        let t = &t;
        async move { t.request(Method::POST, &url, "/v1/checkins", None, Some(body)).await }
    };
    assert_eq!(t.scan(&t.code(h), &metro, "out", None).await.reason, "no_health_record");
    let (s, v) = checkin(t.code(h), 36.5, vec![]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["color"], "green");
    // The check-in is a health record: the holder passes now.
    assert_eq!(t.scan(&t.code(h), &metro, "out", None).await.short(), "pass/ok/green");
    // Twice the same day: 409, and it changes nothing (not even a fever).
    let epoch = t.gw.store().epoch();
    assert_eq!(checkin(t.code(h), 39.0, vec![]).await.0, StatusCode::CONFLICT);
    assert_eq!(t.gw.store().epoch(), epoch);
    assert_eq!(t.color_of(h).await, "green");
    // The next calendar day (Wuhan time) a fever check-in turns them yellow.
    t.clock.advance(86_400);
    let (s, v) = checkin(t.code(h), 38.1, vec![]).await;
    assert_eq!((s, v["color"].as_str()), (StatusCode::OK, Some("yellow")));
    assert_eq!(t.scan(&t.code(h), &metro, "out", None).await.short(), "deny/not_green/yellow");
    // Symptoms alone do it too.
    let g = t.holder("green", 4);
    assert_eq!(checkin(t.code(g), 36.6, vec!["cough"]).await.1["color"], "yellow");
    // Refusals.
    assert_eq!(checkin("HG1:BAD".into(), 36.5, vec![]).await.0, StatusCode::UNAUTHORIZED);
    let forged = t.code_with(&t.env.forged_key.clone(), g, t.now(), 60);
    assert_eq!(checkin(forged, 36.5, vec![]).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(checkin(t.code(t.env.population.stranger(3)), 36.5, vec![]).await.0, StatusCode::NOT_FOUND);
    assert_eq!(checkin(t.code(g), 99.0, vec![]).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn reload_swaps_the_config_and_refuses_a_broken_one() {
    let t = TestGateway::start().await;
    let yellow = t.holder("yellow", 0);
    let metro = "wuhan-metro-wuchang-1";
    assert_eq!(t.scan(&t.code(yellow), metro, "out", None).await.reason, "not_green");
    let path = t.config.path.clone();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("[classes.metro]\nadmit = [\"green\"]", "[classes.metro]\nadmit = [\"green\", \"yellow\"]"),
    )
    .unwrap();
    let op = t.key(Role::Operator).to_owned();
    let admin = t.env.admin_url.clone();
    let (s, v) = t.request(Method::POST, &admin, "/v1/admin/reload", Some(&op), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(t.scan(&t.code(yellow), metro, "out", None).await.short(), "pass/ok/yellow");
    // A broken file is refused with its error; the running config stays.
    std::fs::write(&path, "this is = not [valid").unwrap();
    let (s, v) = t.request(Method::POST, &admin, "/v1/admin/reload", Some(&op), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("reload refused"), "{v}");
    assert_eq!(t.scan(&t.code(yellow), metro, "out", None).await.short(), "pass/ok/yellow");
    // A turnstile key may not reload.
    let ts = t.key(Role::Turnstile).to_owned();
    assert_eq!(t.request(Method::POST, &admin, "/v1/admin/reload", Some(&ts), None).await.0, StatusCode::FORBIDDEN);
}

/// A 100 000-change batch is verified and applied off the async workers:
/// scans of holders who are not in it, colour-changing fevers among them,
/// keep being answered, correctly, while it is applied, and the batch is
/// applied whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_is_applied_while_scans_of_other_holders_are_answered() {
    let t = std::sync::Arc::new(TestGateway::start().await);
    let changes: Vec<Change> =
        (0..100_000u64).map(|i| change(t.env.population.stranger(10_000 + i), Color::Red, vec![])).collect();
    let (first, last) = (changes[0].holder, changes[99_999].holder);
    let (kid, key) = healthgate::operations::keyfiles::read_secret(&t.env.authority_key).unwrap();
    let body = healthgate::feed::UpdateBatch { seq: 3, kid: String::new(), changes, signature: String::new() }
        .sign(kid, &key)
        .unwrap();
    let body = serde_json::to_vec(&body).unwrap();
    let (admin, auth) = (t.env.admin_url.clone(), t.key(Role::Authority).to_owned());
    // On a connection of its own: a pooled one may have idled past the
    // server's keep-alive while the batch was signed.
    let push = tokio::spawn(async move {
        use http_body_util::BodyExt;
        let req = http::Request::post(format!("{admin}/v1/admin/updates"))
            .header("authorization", format!("Bearer {auth}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let resp = healthgate_tests::client().request(req).await.expect("push");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice::<serde_json::Value>(&bytes).expect("json"))
    });
    let greens = t.greens(250);
    let (normal, feverish) = greens.split_at(50);
    let mut scans = 0;
    let mut fevers = 0;
    while !push.is_finished() || scans < 200 {
        let h = normal[scans % normal.len()];
        let s = t.scan(&t.code(h), "wuhan-metro-wuchang-1", "out", None).await;
        assert_eq!(s.short(), "pass/ok/green", "{h} during the batch");
        scans += 1;
        // Every fourth scan a fever: a colour change of a holder outside
        // the batch, which orders itself against batches of its own holders
        // only (it is answered during the batch, not after it).
        if scans % 4 == 0 && fevers < feverish.len() {
            let h = feverish[fevers];
            let s = t.scan(&t.code(h), "wuhan-metro-wuchang-1", "in", Some(38.8)).await;
            assert_eq!(s.short(), "deny/fever/yellow", "{h} with a fever during the batch");
            fevers += 1;
        }
    }
    let (status, v) = push.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["applied"], 100_000);
    assert_eq!(t.color_of(first).await, "red");
    assert_eq!(t.color_of(last).await, "red");
    for h in &feverish[..fevers] {
        assert_eq!(t.color_of(*h).await, "yellow", "{h} had a fever");
    }
}
