//! `manifests/monitoring/`: the PrometheusRule passes `promtool check rules`
//! and its unit tests (`promtool test rules`, promtool fetched by
//! hack/promtool.sh when missing: never skipped), and every query of the
//! Grafana dashboard is one of its expressions or recorded series.

use std::{path::PathBuf, process::Command};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn monitoring() -> PathBuf {
    repo().join("manifests/monitoring")
}

/// The PrometheusRule's `spec`: a Prometheus rule file.
fn rule_file() -> serde_json::Value {
    let text = std::fs::read_to_string(monitoring().join("prometheus-rule.yaml")).expect("prometheus-rule.yaml");
    let rule: serde_json::Value = serde_saphyr::from_str(&text).expect("yaml");
    assert_eq!(rule["kind"], "PrometheusRule");
    rule["spec"].clone()
}

fn collapse(expr: &str) -> String {
    expr.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn promtool(dir: &std::path::Path, args: &[&str]) -> String {
    let out =
        Command::new(repo().join("hack/promtool.sh")).args(args).current_dir(dir).output().expect("hack/promtool.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn prometheus_rules_pass_promtool_check_and_unit_tests() {
    let dir = tempfile::tempdir().expect("tempdir");
    // JSON is YAML: the spec is written as promtool reads it.
    std::fs::write(dir.path().join("writ.rules.yaml"), serde_json::to_string_pretty(&rule_file()).expect("json"))
        .expect("write rules");
    let checked = promtool(dir.path(), &["check", "rules", "writ.rules.yaml"]);
    assert!(checked.contains("SUCCESS: 13 rules found"), "{checked}");
    let mut tests = Vec::new();
    for entry in std::fs::read_dir(monitoring().join("tests")).expect("tests/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().expect("name").to_string_lossy().into_owned();
            std::fs::copy(&path, dir.path().join(&name)).expect("copy test");
            tests.push(name);
        }
    }
    assert!(!tests.is_empty(), "no promtool tests in manifests/monitoring/tests");
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    let tested = promtool(dir.path(), &args);
    assert!(tested.contains("SUCCESS") && !tested.contains("FAILED"), "{tested}");
}

#[test]
fn every_alert_the_issue_asks_for_is_there_with_its_metric() {
    let spec = rule_file();
    let rules: Vec<&serde_json::Value> =
        spec["groups"].as_array().expect("groups").iter().flat_map(|g| g["rules"].as_array().expect("rules")).collect();
    let alert = |name: &str| {
        rules.iter().find(|r| r["alert"] == name).unwrap_or_else(|| panic!("alert {name} missing"))["expr"]
            .as_str()
            .expect("expr")
            .to_string()
    };
    for (name, metric) in [
        ("WritRevocationListNearCapacity", "writ_revocation_list_capacity_ratio"),
        ("WritWebhookRefusingNotReady", r#"rule="not-ready""#),
        ("WritReconcilesRetrying", "writ_reconcile_retrying"),
        ("WritNoLeader", "writ_leader"),
        ("WritPodCertificatePastRotation", "writ_pod_certificate_rotation_timestamp_seconds"),
        ("WritGrantApprovalDeadlineNear", "writ_grant_approval_deadline_timestamp_seconds"),
    ] {
        assert!(alert(name).contains(metric), "{name} does not read {metric}");
    }
    let retrying = rules.iter().find(|r| r["alert"] == "WritReconcilesRetrying").expect("alert");
    assert_eq!(retrying["for"], "10m");
    let leader = rules.iter().find(|r| r["alert"] == "WritNoLeader").expect("alert");
    assert_eq!(leader["for"], "1m");
}

#[test]
fn every_dashboard_query_is_a_rule_expression_or_a_recorded_series() {
    let spec = rule_file();
    let mut known = std::collections::BTreeSet::new();
    for group in spec["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            known.insert(collapse(rule["expr"].as_str().expect("expr")));
            if let Some(record) = rule["record"].as_str() {
                known.insert(record.to_string());
            }
        }
    }
    let text = std::fs::read_to_string(monitoring().join("writ-dashboard.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = collapse(target["expr"].as_str().expect("expr"));
            assert!(known.contains(&expr), "panel {:?} queries {expr:?}, which no rule has", panel["title"]);
            queries += 1;
        }
    }
    assert!(queries >= 10, "{queries} queries");
}

#[test]
fn monitoring_stays_out_of_the_default_install_and_lists_what_it_ships() {
    let default = std::fs::read_to_string(repo().join("manifests/kustomization.yaml")).expect("kustomization");
    assert!(
        !default.contains("monitoring"),
        "manifests/kustomization.yaml must not need the Prometheus Operator's CRDs"
    );
    let text = std::fs::read_to_string(monitoring().join("kustomization.yaml")).expect("monitoring kustomization");
    let k: serde_json::Value = serde_saphyr::from_str(&text).expect("yaml");
    for file in k["resources"].as_array().expect("resources") {
        assert!(monitoring().join(file.as_str().expect("path")).is_file(), "{file} missing");
    }
    for file in k["configMapGenerator"][0]["files"].as_array().expect("files") {
        assert!(monitoring().join(file.as_str().expect("path")).is_file(), "{file} missing");
    }
}
