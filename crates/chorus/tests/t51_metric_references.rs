//! Every metric the alert rules, their unit tests and the dashboard reference is exported by a
//! running `chorus dev`, and what it exports follows the naming and label rules.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Api, Server, deploy, enc};
use serde_json::json;

/// Metrics referenced by `deploy/` that `chorus dev` does not export, each with the reason
/// and the process that will. Keep it short: a name here is a promise.
const NOT_EXPORTED_BY_DEV: &[(&str, &str)] = &[];

/// Labels that would make series unbounded (one per user, stream, session or connection).
const FORBIDDEN_LABELS: &[&str] =
    &["user", "user_id", "stream", "stream_name", "publisher", "session", "connection", "name"];

/// The subsystems metric names start with (`chorus_<subsystem>_<name>_<unit>`).
const SUBSYSTEMS: &[&str] = &["edge", "node", "process", "raft", "storage"];

struct Exported {
    /// Family name → type, from the `# TYPE` lines.
    families: BTreeMap<String, String>,
    /// Sample name → label names seen on it.
    labels: BTreeMap<String, BTreeSet<String>>,
}

impl Exported {
    /// The series names a query may use: a histogram's `_bucket`, `_sum` and `_count`.
    fn series_names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for (family, kind) in &self.families {
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{family}{suffix}"));
                }
            } else {
                names.insert(family.clone());
            }
        }
        names
    }
}

fn parse_exposition(text: &str) -> Exported {
    let mut families = BTreeMap::new();
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_end = line.find(['{', ' ']).unwrap();
            let entry = labels.entry(line[..name_end].to_owned()).or_default();
            if let Some(open) = line.find('{') {
                let close = line.rfind('}').unwrap();
                for pair in line[open + 1..close].split(',').filter(|p| !p.is_empty()) {
                    entry.insert(pair.split_once('=').unwrap().0.to_owned());
                }
            }
        }
    }
    Exported { families, labels }
}

/// Starts `chorus dev`, sends the requests that create the labelled series (a labelled
/// family has no series before its first use), and reads `/metrics`.
async fn exported_after_traffic() -> Exported {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let (status, _) = alice
        .call("POST", "/v1/streams", Some(json!({"type": "Chat/room", "name": "Chat/room/m"})))
        .await;
    assert_eq!(status, 201);
    let messages = format!("/v1/streams/alice/{}/messages", enc("Chat/room/m"));
    let (status, _) =
        alice.call("POST", &messages, Some(json!({"type": "Chat/message", "content": "x"}))).await;
    assert_eq!(status, 201);
    let text = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    exported(&text)
}

fn exported(text: &str) -> Exported {
    let parsed = parse_exposition(text);
    assert!(!parsed.families.is_empty(), "no metrics in:\n{text}");
    parsed
}

/// Every `chorus_*` name in the alert rules, the alert unit tests and the
/// dashboard is exported (or allow-listed with a reason).
#[tokio::test]
async fn every_referenced_metric_is_exported() {
    let exported = exported_after_traffic().await.series_names();
    let mut referenced: BTreeMap<String, String> = BTreeMap::new();
    for (alert, expr) in deploy::alert_exprs() {
        for name in deploy::metric_names(&expr) {
            referenced.entry(name).or_insert(format!("alert {alert}"));
        }
    }
    for series in deploy::alert_test_series() {
        for name in deploy::metric_names(&series) {
            referenced.entry(name).or_insert("alerts.test.yml".into());
        }
    }
    for (panel, expr) in deploy::dashboard_exprs() {
        for name in deploy::metric_names(&expr) {
            referenced.entry(name).or_insert(format!("dashboard panel {panel:?}"));
        }
    }
    assert!(referenced.len() > 20, "the scan finds the references: {referenced:?}");
    let allowed: BTreeSet<&str> = NOT_EXPORTED_BY_DEV.iter().map(|(name, _)| *name).collect();
    let missing: Vec<String> = referenced
        .iter()
        .filter(|(name, _)| !exported.contains(*name) && !allowed.contains(name.as_str()))
        .map(|(name, place)| format!("{name} (used by {place})"))
        .collect();
    assert!(missing.is_empty(), "referenced but not exported: {missing:#?}");
}

/// Every exported metric is named `chorus_<subsystem>_…` (DESIGN.md §3: names `chorus_*`, the
/// process metrics included), counters end in `_total`, and no label could take a user, stream
/// or connection id.
#[tokio::test]
async fn exported_metrics_follow_the_rules() {
    let exported = exported_after_traffic().await;
    for (family, kind) in &exported.families {
        let rest = family
            .strip_prefix("chorus_")
            .unwrap_or_else(|| panic!("{family}: every metric is named chorus_*"));
        let subsystem = rest.split('_').next().unwrap();
        assert!(SUBSYSTEMS.contains(&subsystem), "{family}: unknown subsystem {subsystem}");
        assert_eq!(kind == "counter", family.ends_with("_total"), "{family} is a {kind}");
    }
    for (series, labels) in &exported.labels {
        for label in labels {
            assert!(!FORBIDDEN_LABELS.contains(&label.as_str()), "{series} has label {label}");
        }
    }
    for expected in [
        "chorus_process_cpu_seconds_total",
        "chorus_process_resident_memory_bytes",
        "chorus_process_open_fds",
    ] {
        assert!(exported.families.contains_key(expected), "{expected} missing");
    }
}

#[test]
fn metric_names_are_found_in_expressions() {
    let names = deploy::metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(chorus_node_x_bucket{job=~\"chorus-.*\"}[5m]))) / chorus_process_open_fds",
    );
    let expected: BTreeSet<String> =
        ["chorus_node_x_bucket", "chorus_process_open_fds"].iter().map(|s| s.to_string()).collect();
    assert_eq!(names, expected);
}
