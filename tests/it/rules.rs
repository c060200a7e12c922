//! Every gateway rule of DOMAIN.md, through `POST /v1/scan`.

use healthgate::state::{HolderState, Step};
use healthgate::Color;
use healthgate_tests::TestGateway;

#[tokio::test]
async fn rule1_green_passes_and_shows_the_epoch() {
    let t = TestGateway::start().await;
    let green = t.holder("green", 0);
    let s = t.scan(&t.code(green), t.checkpoint("metro"), "in", None).await;
    assert_eq!(s.short(), "pass/ok/green");
    assert_eq!(s.epoch, t.gw.store().epoch());
}

#[tokio::test]
async fn rule2_yellow_and_red_are_denied_but_a_clinic_admits_yellow() {
    let t = TestGateway::start().await;
    for c in ["yellow", "red"] {
        let s = t.scan(&t.code(t.holder(c, 0)), t.checkpoint("metro"), "in", None).await;
        assert_eq!(s.short(), format!("deny/not_green/{c}"));
    }
    let clinic = t.checkpoint("clinic").to_owned();
    assert_eq!(t.scan(&t.code(t.holder("yellow", 0)), &clinic, "in", Some(36.6)).await.short(), "pass/ok/yellow");
    assert_eq!(t.scan(&t.code(t.holder("red", 0)), &clinic, "in", Some(36.6)).await.short(), "deny/not_green/red");
}

#[tokio::test]
async fn rule3_fever_denies_and_turns_the_holder_yellow_everywhere_at_once() {
    let t = TestGateway::start().await;
    let h = t.holder("green", 0);
    let rail = t.checkpoint("rail").to_owned();
    let before = t.gw.store().epoch();
    let s = t.scan(&t.code(h), &rail, "in", Some(37.3)).await;
    assert_eq!(s.short(), "deny/fever/yellow");
    assert!(s.epoch > before, "a colour change moves the epoch");
    // The next scan at any checkpoint, in another region too, sees yellow.
    for cp in ["wuhan-metro-wuchang-1", "ningbo-metro-east-1"] {
        assert_eq!(t.scan(&t.code(h), cp, "in", None).await.short(), "deny/not_green/yellow");
    }
    // Quarantine ends after the region's time (Wuhan: 14 days).
    t.clock.advance(14 * 24 * 3600);
    assert_eq!(t.scan(&t.code(h), &rail, "in", Some(36.5)).await.short(), "pass/ok/green");
}

#[tokio::test]
async fn rule3_just_below_the_threshold_is_a_normal_reading() {
    let t = TestGateway::start().await;
    let s = t.scan(&t.code(t.holder("green", 0)), t.checkpoint("rail"), "in", Some(37.2)).await;
    assert_eq!(s.short(), "pass/ok/green");
}

#[tokio::test]
async fn rule4_stale_green_counts_as_yellow_until_a_normal_reading() {
    let t = TestGateway::start().await;
    let h = t.holder("green_no_record", 0);
    let metro = t.checkpoint("metro").to_owned();
    assert_eq!(t.scan(&t.code(h), &metro, "in", None).await.short(), "deny/no_health_record/yellow");
    // A normal reading at a checkpoint is a new record: passes at once...
    assert_eq!(t.scan(&t.code(h), t.checkpoint("rail"), "in", Some(36.4)).await.short(), "pass/ok/green");
    // ...and everywhere after, until the window (Wuhan: 12 h) runs out.
    assert_eq!(t.scan(&t.code(h), &metro, "in", None).await.short(), "pass/ok/green");
    t.clock.advance(12 * 3600 + 1);
    assert_eq!(t.scan(&t.code(h), &metro, "out", None).await.short(), "deny/no_health_record/yellow");
}

#[tokio::test]
async fn rules5_6_scheduled_steps_turn_over_when_read() {
    let t = TestGateway::start().await;
    let h = t.holder("green", 3);
    let now = t.now();
    let day = 24 * 3600;
    // Red for 14 days, then yellow for 7, then green: set in the store as
    // the authority's feed does.
    t.gw.store().insert(
        h,
        HolderState::new(Color::Red, now, Some(now)),
        vec![Step { until: now + 14 * day, then: Color::Yellow }, Step { until: now + 21 * day, then: Color::Green }],
    );
    let rail = t.checkpoint("rail").to_owned();
    t.clock.set(now + 14 * day - 1);
    assert_eq!(t.scan(&t.code(h), &rail, "in", Some(36.5)).await.short(), "deny/not_green/red");
    t.clock.set(now + 14 * day);
    assert_eq!(t.scan(&t.code(h), &rail, "in", Some(36.5)).await.short(), "deny/not_green/yellow");
    t.clock.set(now + 21 * day);
    assert_eq!(t.scan(&t.code(h), &rail, "in", Some(36.5)).await.short(), "pass/ok/green");
}

#[tokio::test]
async fn rule7_pending_does_not_pass() {
    let t = TestGateway::start().await;
    let s = t.scan(&t.code(t.holder("pending", 0)), t.checkpoint("clinic"), "in", Some(36.5)).await;
    assert_eq!(s.short(), "deny/pending/pending");
}

#[tokio::test]
async fn rule11_other_trusted_issuers_are_accepted() {
    let t = TestGateway::start().await;
    let code = t.code_with(&t.env.national_key.clone(), t.holder("green", 0), t.now(), 60);
    assert_eq!(t.scan(&code, t.checkpoint("metro"), "in", None).await.short(), "pass/ok/green");
}

#[tokio::test]
async fn rule11_an_issuer_not_accepted_in_this_region_is_unknown_issuer() {
    // Ningbo accepts only the national platform in this configuration.
    let t = TestGateway::start_with(Box::new(|c| {
        c.replacen(
            "[regions.ningbo]\nutc_offset = \"+08:00\"\nfever_threshold_c = 37.3\nhealth_record_validity_s = 86400\nfever_quarantine_s = 604800\naccept_issuers = [\"hubei\", \"national\"]",
            "[regions.ningbo]\nutc_offset = \"+08:00\"\nfever_threshold_c = 37.3\nhealth_record_validity_s = 86400\nfever_quarantine_s = 604800\naccept_issuers = [\"national\"]",
            1,
        )
    }))
    .await;
    let h = t.holder("green", 0);
    let ningbo = "ningbo-metro-east-1";
    assert_eq!(t.scan(&t.code(h), ningbo, "in", None).await.short(), "deny/unknown_issuer/unknown");
    let national = t.code_with(&t.env.national_key.clone(), h, t.now(), 60);
    assert_eq!(t.scan(&national, ningbo, "in", None).await.short(), "pass/ok/green");
}

#[tokio::test]
async fn anti_passback_refuses_a_second_in_until_an_out_or_the_window_ends() {
    let t = TestGateway::start().await;
    let h = t.holder("green", 1);
    let (gate1, gate2) = ("wuhan-metro-hankou-1", "wuhan-metro-hankou-2");
    assert_eq!(t.scan(&t.code(h), gate1, "in", None).await.short(), "pass/ok/green");
    // Another gate of the same station group: same station, refused.
    assert_eq!(t.scan(&t.code(h), gate2, "in", None).await.short(), "deny/anti_passback/green");
    // Another station is fine.
    assert_eq!(t.scan(&t.code(h), "wuhan-metro-wuchang-1", "in", None).await.short(), "pass/ok/green");
    assert_eq!(t.scan(&t.code(h), gate1, "out", None).await.short(), "pass/ok/green");
    assert_eq!(t.scan(&t.code(h), gate1, "in", None).await.short(), "pass/ok/green");
    // The window (300 s for metro) ends.
    t.clock.advance(299);
    assert_eq!(t.scan(&t.code(h), gate1, "in", None).await.short(), "deny/anti_passback/green");
    t.clock.advance(1);
    assert_eq!(t.scan(&t.code(h), gate1, "in", None).await.short(), "pass/ok/green");
}

#[tokio::test]
async fn token_failures_each_have_their_reason() {
    let t = TestGateway::start().await;
    let h = t.holder("green", 0);
    let metro = t.checkpoint("metro").to_owned();
    let now = t.now();
    let issuer = t.env.issuer_key.clone();
    let cases = [
        (t.code_with(&issuer, h, now - 100, 60), "expired"),
        (t.code_with(&issuer, h, now - 90, 60), "pass"),
        (t.code_with(&issuer, h, now + 31, 60), "not_yet_valid"),
        (t.code_with(&issuer, h, now + 30, 60), "pass"),
        (t.code_with(&t.env.forged_key.clone(), h, now, 60), "bad_signature"),
        (t.code_with(&t.env.untrusted_key.clone(), h, now, 60), "unknown_issuer"),
        ("HG1:NOT-A-CODE".to_owned(), "malformed"),
        (String::new(), "malformed"),
        (t.code(h).to_lowercase(), "malformed"),
    ];
    for (code, want) in cases {
        let s = t.scan(&code, &metro, "out", None).await;
        if want == "pass" {
            assert_eq!(s.short(), "pass/ok/green", "skew edge");
        } else {
            assert_eq!(s.short(), format!("deny/{want}/unknown"), "{code}");
        }
    }
    // A tampered code: one character changed in the signed part.
    let mut code = t.code(h).into_bytes();
    code[20] = if code[20] == b'A' { b'B' } else { b'A' };
    let s = t.scan(std::str::from_utf8(&code).unwrap(), &metro, "out", None).await;
    assert!(["bad_signature", "malformed", "unknown_issuer"].contains(&s.reason.as_str()), "{s:?}");
    assert_eq!(s.decision, "deny");
}

#[tokio::test]
async fn unknown_holder_is_denied() {
    let t = TestGateway::start().await;
    let stranger = t.env.population.stranger(1);
    assert_eq!(
        t.scan(&t.code(stranger), t.checkpoint("metro"), "in", None).await.short(),
        "deny/unknown_holder/unknown"
    );
}
