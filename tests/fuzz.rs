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

/// YAML structure with its pieces shuffled: flow and block collections left
/// open, anchors, aliases and tags, tabs, quotes, document markers, bad
/// indentation, duplicate keys, around a Writ-shaped head.
/// Pieces of YAML structure: flow and block collections, anchors, aliases
/// and tags, tabs, quotes, document markers, indentation, duplicate keys.
const YAML_PIECES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ": ",
    "- ",
    ", ",
    "\n",
    "\n  ",
    "\n    ",
    "\t",
    "&a ",
    "*a",
    "*missing",
    "!!str ",
    "!!binary ",
    "!custom ",
    "? ",
    "|\n",
    ">-\n",
    "\"",
    "'",
    "# c\n",
    "\n---\n",
    "\n...\n",
    "%YAML 1.2\n",
    "kind: CapabilityGrant\n",
    "kind: AgentIdentity\n",
    "apiVersion: writ.dev/v1alpha1\n",
    "metadata: {name: x}\n",
    "spec:\n  ttl: 10m\n  ttl: 5m\n",
    "~",
    "0x1F",
    "1e999",
    ".nan",
    "\u{feff}",
    "\u{0}",
    "é",
];

/// Those pieces shuffled, with words between, after a Writ-shaped head.
fn malformed_yaml() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => proptest::sample::select(YAML_PIECES).prop_map(str::to_string),
        1 => near("a-z0-9", 8),
    ];
    proptest::collection::vec(piece, 0..40)
        .prop_map(|pieces| format!("apiVersion: writ.dev/v1alpha1\nkind: CapabilityGrant\n{}", pieces.concat()))
}

fn malformed_cases() -> u32 {
    cases().min(2000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(malformed_cases()))]

    /// Malformed YAML never panics `writ check`, and every load error names the
    /// file and the document it is in.
    #[test]
    fn check_names_the_file_of_every_malformed_document(doc in malformed_yaml()) {
        let opts = CheckOptions::new("alice", vec!["release-managers".into()]);
        match check_str("repo/grants.yaml", &doc, &opts) {
            Ok(report) => { let _ = report.render(); }
            Err(writ::check::CheckError::Documents(errors)) => {
                prop_assert!(!errors.is_empty());
                for e in &errors {
                    prop_assert_eq!(e.file.to_str(), Some("repo/grants.yaml"));
                    prop_assert!(e.document >= 1);
                    prop_assert!(!e.message.trim().is_empty());
                    let line = e.to_string();
                    prop_assert!(line.starts_with("repo/grants.yaml: document "), "{}", line);
                }
            }
            Err(other) => prop_assert!(false, "unexpected error kind: {other}"),
        }
    }
}

fn cli_cases() -> u32 {
    (cases() / 100).clamp(8, 64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cli_cases()))]

    /// The `writ check` binary on a malformed file beside a sound one: exit
    /// code 2, an error naming the malformed file, nothing about the sound
    /// one, and never a panic.
    #[test]
    fn writ_check_exits_2_naming_the_malformed_file(doc in malformed_yaml()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = dir.path().join("bad.yaml");
        // An unclosed flow sequence at the end keeps every generated file a syntax error.
        std::fs::write(&bad, format!("{doc}\nbroken: [unclosed\n")).expect("write");
        let good = dir.path().join("good.yaml");
        std::fs::write(&good, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fine}\n").expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_writ"))
            .args(["check", "--as", "alice"])
            .arg(&good)
            .arg(&bad)
            .output()
            .expect("run writ check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        prop_assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr);
        prop_assert!(!stderr.contains("panicked"), "{}", stderr);
        prop_assert!(stderr.contains(&format!("{}: document ", bad.display())), "{}", stderr);
        prop_assert!(!stderr.contains("good.yaml"), "{}", stderr);
    }
}

/// An alias bomb (the "billion laughs") and a deeply nested document are
/// refused by the parser's budgets, quickly, with an error naming the file.
#[test]
fn check_refuses_alias_bombs_and_deep_nesting_within_budget() {
    let opts = CheckOptions::new("alice", vec![]);
    let mut bomb = String::from("apiVersion: writ.dev/v1alpha1\nkind: CapabilityGrant\na0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..12 {
        let p = i - 1;
        bomb.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
    }
    let deep = format!(
        "apiVersion: writ.dev/v1alpha1\nkind: CapabilityGrant\nspec: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    for (name, text) in [("bomb.yaml", bomb), ("deep.yaml", deep)] {
        let started = std::time::Instant::now();
        let err = check_str(name, &text, &opts).expect_err("refused");
        assert!(err.to_string().starts_with(&format!("{name}: document 1: ")), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{name} took {:?}", started.elapsed());
    }
}
