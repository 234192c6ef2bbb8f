//! Bounded fuzzing (proptest) of everything that reads untrusted input: the
//! duration parser, the capability grammar and matcher, token parsing and
//! verification, certificates, `writ check`'s YAML loading, and the
//! AdmissionReview parser. No panics, no hangs, every answer well formed.
//! `PROPTEST_CASES` raises the bound (CI runs the default).

use std::str::FromStr;

use proptest::prelude::*;
use writ::{
    api::{CapabilityGrant, Duration},
    check::{check_str, CheckOptions},
    pki::JwkSet,
    policy::{parse_action, parse_action_pattern, parse_resource, parse_resource_pattern},
    verify::{verify_signed, Attempt, Verifier},
};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(5000)
}

/// Text that looks like the input each parser expects, with junk mixed in.
fn near(alphabet: &'static str, max: usize) -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        3 => proptest::string::string_regex(&format!("[{alphabet}]{{0,{max}}}")).expect("regex"),
        1 => ".{0,64}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn durations_parse_or_refuse_and_round_trip(s in near("0-9smhd ", 12)) {
        if let Ok(d) = Duration::from_str(&s) {
            prop_assert_eq!(Duration::from_str(&d.to_string()).expect("round trip"), d);
        }
    }

    #[test]
    fn grammar_parsers_and_matcher_never_panic(a in near("a-z0-9:.*/%-", 24), r in near("a-z0-9:.*/%-", 40)) {
        let _ = parse_action(&a);
        let _ = parse_resource(&r);
        if let (Ok(pa), Ok(pr)) = (parse_action_pattern(&a), parse_resource_pattern(&r)) {
            // A literal pattern matches itself only.
            if pa.is_literal() {
                prop_assert!(pa.matches(&a));
            }
            let _ = pr.matches(&r);
        }
    }

    #[test]
    fn tokens_never_verify_from_junk(t in near("A-Za-z0-9_.-", 300)) {
        let jwks = JwkSet::default();
        prop_assert!(verify_signed(&t, &jwks, 1_750_000_000, 30).is_err());
        let _ = writ::pki::token::decode_unverified(&t);
        let _ = writ::inspect::inspect(t.as_bytes());
    }

    #[test]
    fn certificates_from_junk_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let ca = ca();
        let v = Verifier::new(ca.cert_pem(), JwkSet::default()).expect("verifier");
        let attempt = Attempt { audience: "a", action: "k8s:x.get", resource: "k8s:a/b" };
        prop_assert!(v.verify("a.b.c", &bytes, &attempt, 1_750_000_000).is_err());
        let _ = writ::pki::CertificateInfo::from_der(&bytes);
        let _ = writ::inspect::inspect(&bytes);
    }

    #[test]
    fn check_loads_any_yaml_without_panicking(doc in yamlish()) {
        let opts = CheckOptions::new("alice", vec!["release-managers".into()]);
        match check_str("fuzz.yaml", &doc, &opts) {
            Ok(report) => { let _ = report.render(); }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn admission_reviews_from_junk_get_an_answer(body in admissionish()) {
        match writ::webhook::parse_request::<CapabilityGrant>(body.as_bytes()) {
            Ok(req) => { let _ = kube::core::admission::AdmissionResponse::from(&req).into_review(); }
            Err(resp) => {
                let review = serde_json::to_value(resp.into_review()).expect("serialises");
                prop_assert_eq!(&review["response"]["allowed"], &serde_json::Value::Bool(false));
            }
        }
    }
}

fn ca() -> &'static writ::pki::CertificateAuthority {
    static CA: std::sync::OnceLock<writ::pki::CertificateAuthority> = std::sync::OnceLock::new();
    CA.get_or_init(|| writ::pki::CertificateAuthority::generate("fuzz", 1_700_000_000, 86_400 * 3650).expect("ca"))
}

/// Writ-shaped YAML with mutated values, and plain junk.
fn yamlish() -> impl Strategy<Value = String> {
    let value = near("a-z0-9:*/.{}\\[\\]-", 20);
    let kind = prop_oneof![Just("AgentIdentity"), Just("DelegationPolicy"), Just("CapabilityGrant"), Just("Pod")];
    prop_oneof![
        4 => (kind, value.clone(), value.clone(), value).prop_map(|(k, a, b, c)| format!(
            "apiVersion: writ.dev/v1alpha1\nkind: {k}\nmetadata: {{name: {a}}}\nspec:\n  agent: {b}\n  serviceAccountName: {b}\n  ttl: {c}\n  capabilities: [{{action: \"{a}\", resource: \"{c}\"}}]\n  ceiling: [{{action: \"{c}\", resource: \"{a}\"}}]\n  delegators: [{{group: {b}}}]\n  delegates: [{{agent: {b}}}]\n  maxTTL: {c}\n  maxDepth: 2\n  audiences: [{a}]\n  task: {{id: {b}}}\n"
        )),
        1 => ".{0,200}",
    ]
}

/// AdmissionReview-shaped JSON with mutated parts, and plain junk.
fn admissionish() -> impl Strategy<Value = String> {
    let s = near("a-z0-9:*/.\"{}-", 16);
    prop_oneof![
        4 => (s.clone(), s.clone(), s).prop_map(|(a, b, c)| format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"{a}","kind":{{"group":"writ.dev","version":"v1alpha1","kind":"CapabilityGrant"}},"resource":{{"group":"writ.dev","version":"v1alpha1","resource":"capabilitygrants"}},"operation":"{b}","userInfo":{{"username":"{c}"}},"object":{{"apiVersion":"writ.dev/v1alpha1","kind":"CapabilityGrant","metadata":{{"name":"{a}"}},"spec":{{"agent":"{c}","ttl":"{b}","capabilities":[],"audiences":[],"task":{{"id":"{a}"}}}}}}}}}}"#
        )),
        1 => ".{0,200}",
    ]
}
