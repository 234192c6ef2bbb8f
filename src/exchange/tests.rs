use super::*;
use crate::api::{CapabilityGrantSpec, CapabilityGrantStatus, TokenRecord};
use crate::pki::token::tests::sample_claims;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

const NOW: i64 = 1_750_000_000;
const DETAILS: &str = r#"[{"type":"writ.dev/capability","actions":["k8s:deployments.patch"],"locations":["k8s:staging/deployments/web"]}]"#;

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish().into_bytes()
}

fn base() -> Vec<(&'static str, &'static str)> {
    vec![
        ("grant_type", GRANT_TYPE),
        ("subject_token", "a.b.c"),
        ("subject_token_type", TOKEN_TYPE_JWT),
        ("resource", "deploy-api"),
        ("authorization_details", DETAILS),
    ]
}

fn with(replace: &[(&'static str, Option<&'static str>)]) -> Vec<u8> {
    let mut pairs = base();
    for (k, v) in replace {
        pairs.retain(|(pk, _)| pk != k);
        if let Some(v) = v {
            pairs.push((k, v));
        }
    }
    form(&pairs)
}

fn web() -> Capability {
    Capability { action: "k8s:deployments.patch".into(), resource: "k8s:staging/deployments/web".into() }
}

#[test]
fn a_well_formed_request_parses() {
    let req = parse_request(&form(&base())).expect("parses");
    assert_eq!(req.target, "deploy-api");
    assert_eq!(req.capabilities, vec![web()]);
    assert_eq!(req.subject_token, "a.b.c");
    assert!(!req.to_string().contains("a.b.c"), "Display never shows the token");
    let by_scope = parse_request(&with(&[
        ("authorization_details", None),
        ("scope", Some("k8s:deployments.patch k8s:staging/deployments/web")),
        ("resource", None),
        ("audience", Some("deploy-api")),
    ]))
    .expect("scope form");
    assert_eq!(by_scope.capabilities, req.capabilities);
    let ctx = parse_request(&with(&[("writ_context", Some(r#"{"tool":"deploy"}"#))])).expect("context");
    assert_eq!(ctx.context.as_deref(), Some(r#"{"tool":"deploy"}"#));
}

#[test]
fn bad_input_is_invalid_request_naming_the_parameter() {
    let long_context = format!("\"{}\"", "x".repeat(MAX_CONTEXT_BYTES));
    let long_context: &'static str = Box::leak(long_context.into_boxed_str());
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (with(&[("grant_type", None)]), "grant_type", "missing-parameter"),
        (with(&[("subject_token", None)]), "subject_token", "missing-parameter"),
        (
            with(&[("subject_token_type", Some("urn:ietf:params:oauth:token-type:saml2"))]),
            "subject_token_type",
            "unsupported-token-type",
        ),
        (with(&[("resource", None)]), "resource", "missing-parameter"),
        (with(&[("audience", Some("x"))]), "resource", "one-target"),
        (with(&[("authorization_details", None)]), "authorization_details", "missing-parameter"),
        (with(&[("scope", Some("a b"))]), "scope", "one-request-form"),
        (with(&[("authorization_details", Some("{"))]), "authorization_details", "not-json-array"),
        (with(&[("authorization_details", Some("[]"))]), "authorization_details", "empty"),
        (
            with(&[("authorization_details", Some(r#"[{"type":"other"}]"#))]),
            "authorization_details[0].type",
            "unknown-detail-type",
        ),
        (
            with(&[("authorization_details", Some(r#"[{"type":"writ.dev/capability","actions":["a"]}]"#))]),
            "authorization_details[0]",
            "bad-detail",
        ),
        (with(&[("authorization_details", None), ("scope", Some("only-one"))]), "scope", "scope-pairs"),
        (with(&[("writ_context", Some("{not json"))]), "writ_context", "not-json"),
        (with(&[("writ_context", Some(long_context))]), "writ_context", "context-too-large"),
        (with(&[("actor_token", Some("x"))]), "actor_token", "unsupported-parameter"),
        (with(&[("requested_token_type", Some("urn:x"))]), "requested_token_type", "unsupported-token-type"),
        (vec![b'a'; MAX_BODY_BYTES + 1], "body", "body-too-large"),
    ];
    for (body, parameter, rule) in cases {
        let err = parse_request(&body).expect_err(rule);
        assert_eq!(err.code, ErrorCode::InvalidRequest, "{err}");
        assert_eq!(err.rule, rule, "{err}");
        assert!(err.description.starts_with(parameter), "{err} should name {parameter}");
    }
    let mut repeated = base();
    repeated.push(("resource", "other"));
    let err = parse_request(&form(&repeated)).expect_err("repeated");
    assert_eq!((err.code, err.rule), (ErrorCode::InvalidRequest, "repeated-parameter"));
    let err = parse_request(&with(&[("grant_type", Some("client_credentials"))])).expect_err("grant type");
    assert_eq!(err.code, ErrorCode::UnsupportedGrantType);
}

#[test]
fn wildcards_are_invalid_scope() {
    let err = parse_scope("k8s:deployments.* k8s:staging/deployments/web").expect_err("wildcard");
    assert_eq!((err.code, err.rule), (ErrorCode::InvalidScope, "wildcard"));
    let err = parse_authorization_details(
        r#"[{"type":"writ.dev/capability","actions":["a:b"],"locations":["k8s:staging/*"]}]"#,
    )
    .expect_err("wildcard");
    assert_eq!(err.code, ErrorCode::InvalidScope);
}

#[test]
fn authorization_details_expand_actions_times_locations_without_repeats() {
    let caps = parse_authorization_details(
        r#"[{"type":"writ.dev/capability","actions":["a:x","a:y"],"locations":["r:1","r:2"]},
            {"type":"writ.dev/capability","actions":["a:x"],"locations":["r:1"]}]"#,
    )
    .expect("parses");
    assert_eq!(caps.len(), 4);
}

fn grant(phase: GrantPhase, expires: i64, jti: &str) -> CapabilityGrant {
    let mut g = CapabilityGrant::new(
        "deploy-web-1234",
        CapabilityGrantSpec {
            agent: "release-bot".into(),
            task: crate::api::Task { id: "PR-1234".into(), intent: None },
            capabilities: vec![],
            audiences: vec!["deploy-api".into()],
            ttl: crate::api::Duration::from_secs(900),
            pod: None,
            parent: None,
            completed: false,
            approval: None,
        },
    );
    g.metadata.uid = Some("grant-uid".into());
    let ts = |t: i64| Time(jiff::Timestamp::from_second(t).expect("time"));
    g.status = Some(CapabilityGrantStatus {
        phase,
        approved: vec![crate::api::Capability { action: web().action, resource: web().resource }],
        expires_at: Some(ts(expires)),
        tokens: vec![TokenRecord { pod: "p".into(), jti: jti.into(), expires_at: ts(expires) }],
        ..Default::default()
    });
    g
}

#[test]
fn authorize_checks_the_grant_at_request_time() {
    let subject = sample_claims("thumb", NOW);
    let req = parse_request(&form(&base())).expect("parses");
    let ok = grant(GrantPhase::Active, NOW + 600, &subject.jti);
    let facts = |g: Option<&'static CapabilityGrant>, revoked, refusal| Facts {
        subject: Box::leak(Box::new(subject.clone())),
        grant: g,
        revoked,
        agent_refusal: refusal,
        now: NOW,
    };
    let leak = |g: CapabilityGrant| -> &'static CapabilityGrant { Box::leak(Box::new(g)) };
    assert_eq!(authorize(&req, &facts(Some(leak(ok.clone())), false, None)), Ok(NOW + 600));
    let rule = |f: Facts<'_>, r: &ExchangeRequest| authorize(r, &f).map_err(|e| (e.code, e.rule));
    assert_eq!(rule(facts(Some(leak(ok.clone())), true, None), &req), Err((ErrorCode::InvalidGrant, "revoked")));
    assert_eq!(rule(facts(None, false, None), &req), Err((ErrorCode::InvalidGrant, "grant-gone")));
    assert_eq!(
        rule(facts(Some(leak(grant(GrantPhase::Revoked, NOW + 600, &subject.jti))), false, None), &req),
        Err((ErrorCode::InvalidGrant, "grant-not-active"))
    );
    assert_eq!(
        rule(facts(Some(leak(grant(GrantPhase::Active, NOW, &subject.jti))), false, None), &req),
        Err((ErrorCode::InvalidGrant, "grant-expired"))
    );
    assert_eq!(
        rule(facts(Some(leak(grant(GrantPhase::Active, NOW + 600, "other"))), false, None), &req),
        Err((ErrorCode::InvalidGrant, "token-superseded"))
    );
    assert_eq!(
        rule(facts(Some(leak(ok.clone())), false, Some("agent release-bot is dormant")), &req),
        Err((ErrorCode::InvalidGrant, "agent-refused"))
    );
    let other_aud = ExchangeRequest { target: "billing-api".into(), ..req.clone() };
    assert_eq!(
        rule(facts(Some(leak(ok.clone())), false, None), &other_aud),
        Err((ErrorCode::InvalidTarget, "audience-not-granted"))
    );
    let other_cap = ExchangeRequest {
        capabilities: vec![Capability { action: "k8s:deployments.delete".into(), resource: web().resource }],
        ..req.clone()
    };
    assert_eq!(
        rule(facts(Some(leak(ok)), false, None), &other_cap),
        Err((ErrorCode::InvalidScope, "capability-not-granted"))
    );
}

#[test]
fn the_issued_token_is_narrowed_and_never_outlives_the_grant() {
    let subject = sample_claims("thumb", NOW - 100);
    let req = parse_request(&form(&base())).expect("parses");
    let c = issued_claims(&subject, &req, NOW + 30, 60, NOW, "j".into(), "t".into());
    assert_eq!(c.exp, NOW + 30, "capped at the grant's expiry");
    let c = issued_claims(&subject, &req, NOW + 600, 60, NOW, "j".into(), "t".into());
    assert_eq!((c.iat, c.nbf, c.exp), (NOW, NOW, NOW + 60));
    assert_eq!(c.aud, vec!["deploy-api".to_string()]);
    assert_eq!(c.cap, vec![web()]);
    assert_eq!((c.jti.as_str(), c.txn.as_deref(), c.gjti.as_deref()), ("j", Some("t"), Some(subject.jti.as_str())));
    assert_eq!(
        (&c.sub, &c.grant, &c.task, &c.act, &c.cnf),
        (&subject.sub, &subject.grant, &subject.task, &subject.act, &subject.cnf)
    );
    let c = issued_claims(&subject, &req, NOW + 600, 10_000, NOW, "j".into(), "t".into());
    assert_eq!(c.exp, NOW + MAX_TTL_SECS);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

    #[test]
    fn the_form_parser_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
        let _ = parse_request(&body);
    }

    #[test]
    fn the_form_parser_never_panics_on_form_shaped_input(
        pairs in proptest::collection::vec(("(grant_type|subject_token|resource|audience|scope|authorization_details|writ_context|x)", ".{0,64}"), 0..10)
    ) {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(&pairs).finish();
        let _ = parse_request(body.as_bytes());
    }

    #[test]
    fn the_details_parser_never_panics(s in ".{0,512}") {
        let _ = parse_authorization_details(&s);
        let _ = parse_scope(&s);
    }

    #[test]
    fn the_details_parser_never_panics_on_json_shaped_input(
        kind in "(writ.dev/capability|other|)", actions in proptest::collection::vec(".{0,16}", 0..4), locations in proptest::collection::vec(".{0,16}", 0..4)
    ) {
        let json = serde_json::json!([{ "type": kind, "actions": actions, "locations": locations }]).to_string();
        let _ = parse_authorization_details(&json);
    }
}
