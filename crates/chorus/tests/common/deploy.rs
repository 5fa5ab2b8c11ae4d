//! The files under `deploy/`, and the metric names they reference.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value as Json;
use serde_norway::Value as Yaml;

pub fn path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(relative)
}

pub fn read(relative: &str) -> String {
    let p = path(relative);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// One YAML document, with `<<` merge keys applied (docker-compose uses them).
pub fn yaml(relative: &str) -> Yaml {
    let mut value: Yaml = serde_norway::from_str(&read(relative))
        .unwrap_or_else(|e| panic!("parsing {relative}: {e}"));
    value.apply_merge().unwrap_or_else(|e| panic!("merge keys in {relative}: {e}"));
    value
}

/// Every document of a multi-document YAML file (Kubernetes manifests).
pub fn yaml_documents(relative: &str) -> Vec<Yaml> {
    let text = read(relative);
    let mut out = Vec::new();
    for document in serde_norway::Deserializer::from_str(&text) {
        let value = <Yaml as serde::Deserialize>::deserialize(document)
            .unwrap_or_else(|e| panic!("parsing {relative}: {e}"));
        if !value.is_null() {
            out.push(value);
        }
    }
    out
}

pub fn dashboard() -> Json {
    serde_json::from_str(&read("grafana/dashboards/chorus.json")).expect("dashboard JSON")
}

/// Every PromQL expression of the alert rules.
pub fn alert_exprs() -> Vec<(String, String)> {
    let rules = yaml("alerts.yml");
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name").to_owned();
            out.push((name, rule["expr"].as_str().expect("expr").to_owned()));
        }
    }
    out
}

/// Every panel target expression of the dashboard, with its panel title.
pub fn dashboard_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard()["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((title.clone(), target["expr"].as_str().expect("expr").to_owned()));
        }
    }
    out
}

/// The series names the alert unit tests feed in.
pub fn alert_test_series() -> Vec<String> {
    let tests = yaml("alerts.test.yml");
    let mut out = Vec::new();
    for test in tests["tests"].as_sequence().expect("tests") {
        for series in test["input_series"].as_sequence().expect("input_series") {
            out.push(series["series"].as_str().expect("series").to_owned());
        }
    }
    out
}

/// The metric names an expression mentions (`chorus_*`, and a stray unprefixed `process_*`).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        let at_boundary = i == 0 || !word(bytes[i - 1]);
        let rest = &expr[i..];
        if at_boundary && (rest.starts_with("chorus_") || rest.starts_with("process_")) {
            let len = rest.bytes().take_while(|b| word(*b)).count();
            names.insert(rest[..len].to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}
