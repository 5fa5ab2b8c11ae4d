//! A real Prometheus (the `prometheus` binary; scripts/test.sh installs it) scrapes a started
//! `chorus dev` with `deploy/prometheus.yml` adapted to the local port, loads
//! `deploy/alerts.yml`, and its HTTP API then reports series whose values match the load this
//! test drove. Every dashboard and alert expression is also evaluated by that Prometheus.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Api, Server, deploy, enc, free_port, ws_connect, ws_reply, ws_send};
use serde_json::{Value, json};
use serde_norway::Value as Yaml;

const POSTS: u64 = 25;

/// A Prometheus server on an ephemeral port, killed on drop.
struct Prometheus {
    child: Child,
    base: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// deploy/prometheus.yml, pointed at `target` (one `chorus dev` process is node and edge in
/// one, so only the node job remains), scraping every second, with the rule file by its
/// absolute path.
fn local_config(target: &str) -> String {
    let mut config = deploy::yaml("prometheus.yml");
    config["global"]["scrape_interval"] = Yaml::from("1s");
    config["global"]["evaluation_interval"] = Yaml::from("1s");
    let rules = deploy::path("alerts.yml").canonicalize().unwrap();
    config["rule_files"] = Yaml::Sequence(vec![Yaml::from(rules.display().to_string())]);
    let jobs = config["scrape_configs"].as_sequence_mut().unwrap();
    assert!(jobs.iter().any(|j| j["job_name"] == "chorus-node"), "the node job is configured");
    jobs.retain(|job| job["job_name"] == "chorus-node");
    jobs[0]["static_configs"] =
        serde_norway::from_str(&format!("[{{targets: [\"{target}\"]}}]")).unwrap();
    serde_norway::to_string(&config).unwrap()
}

async fn start_prometheus(dir: &Path, target: &str) -> Prometheus {
    let binary = "prometheus";
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, local_config(target)).unwrap();
    let client = reqwest::Client::new();
    // The port is free when picked but could be taken before Prometheus binds it: retry.
    for _attempt in 0..3 {
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting `{binary}` failed ({e}); install it: apt-get install prometheus")
            });
        let mut prometheus = Prometheus { child, base: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if prometheus.child.try_wait().unwrap().is_some() {
                break;
            }
            let ready = client.get(format!("{}/-/ready", prometheus.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = prometheus.child.kill();
    }
    panic!("prometheus did not become ready");
}

/// An instant query; the `data` of a successful answer.
async fn query(prometheus: &Prometheus, expr: &str) -> Value {
    let url = format!("{}/api/v1/query?query={}", prometheus.base, enc(expr));
    let answer: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(answer["status"], "success", "{expr}: {answer}");
    answer["data"].clone()
}

/// The single value of a vector query, if it has exactly one sample.
async fn scalar(prometheus: &Prometheus, expr: &str) -> Option<f64> {
    let data = query(prometheus, expr).await;
    let result = data["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

/// Polls until every expression has its expected value (scrapes are every second).
async fn wait_for_values(prometheus: &Prometheus, expected: &[(&str, f64)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = Vec::new();
        for (expr, want) in expected {
            seen.push((*expr, scalar(prometheus, expr).await, *want));
        }
        if seen.iter().all(|(_, got, want)| *got == Some(*want)) {
            for (expr, got, _) in &seen {
                println!("prometheus: {expr} = {}", got.unwrap_or(f64::NAN));
            }
            return;
        }
        assert!(Instant::now() < deadline, "prometheus never saw the load: {seen:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Posts, a retry, a refused post and a listener's deliveries show up in Prometheus with
/// exactly the counts driven; Raft, storage and process series are there with sane values;
/// the alert rules are loaded and none fires on a healthy server.
#[tokio::test]
async fn prometheus_scrapes_chorus_and_sees_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("chorus"));
    let prometheus = start_prometheus(dir.path(), &server.addr).await;

    let alice = Api::new(&server, server.token("alice", &[]));
    let room = format!("/v1/streams/alice/{}", enc("Chat/room/metrics"));
    let (status, created) = alice
        .call(
            "POST",
            "/v1/streams",
            Some(json!({"type": "Chat/room", "name": "Chat/room/metrics"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");

    // A listener, so every new message is one fan-out delivery.
    let mut ws = ws_connect(&server, &server.token("alice", &[])).await;
    let stream = json!({"publisherId": "alice", "name": "Chat/room/metrics"});
    ws_send(&mut ws, json!({"id": 1, "op": "listen", "stream": stream})).await;
    assert!(ws_reply(&mut ws, 1).await.get("ok").is_some());

    let messages = format!("{room}/messages");
    for n in 0..POSTS {
        let body = json!({"type": "Chat/message", "content": format!("m{n}"), "clientMsgId": format!("c{n}")});
        let (status, reply) = alice.call("POST", &messages, Some(body)).await;
        assert_eq!(status, 201, "{reply}");
    }
    // An idempotent retry is acknowledged (200) without a new message.
    let retry = json!({"type": "Chat/message", "content": "m0", "clientMsgId": "c0"});
    assert_eq!(alice.call("POST", &messages, Some(retry)).await.0, 200);
    // Bob cannot see the private room: not_found.
    let bob = Api::new(&server, server.token("bob", &[]));
    let refused = json!({"type": "Chat/message", "content": "hi"});
    assert_eq!(bob.call("POST", &messages, Some(refused)).await.0, 404);

    let acked = (POSTS + 1) as f64;
    wait_for_values(
        &prometheus,
        &[
            ("up{job=\"chorus-node\"}", 1.0),
            ("sum(chorus_node_posts_total{code=\"ok\"})", acked),
            ("sum(chorus_node_posts_total{code=\"not_found\"})", 1.0),
            ("sum(chorus_node_posts_total)", acked + 1.0),
            ("chorus_node_post_duplicates_total", 1.0),
            ("chorus_node_post_duration_seconds_count", acked + 1.0),
            (
                "sum(chorus_edge_requests_total{transport=\"http\", op=\"post\", code=\"ok\"})",
                acked,
            ),
            ("sum(chorus_edge_request_duration_seconds_count{op=\"post\"})", acked + 1.0),
            ("chorus_edge_deliveries_total", POSTS as f64),
            ("chorus_edge_sessions", 1.0),
            ("chorus_edge_listens", 1.0),
            ("count(chorus_raft_shard_leader > 0)", 8.0),
            ("sum(chorus_raft_shard_is_leader)", 8.0),
            ("chorus_raft_shards_without_leader", 0.0),
            ("max(chorus_raft_shard_apply_lag)", 0.0),
        ],
    )
    .await;

    // Series whose exact value depends on the machine: present and plausible.
    for (expr, at_least) in [
        ("chorus_storage_log_fsyncs_total", 1.0),
        ("chorus_storage_log_fsync_duration_seconds_count", 1.0),
        ("chorus_node_commit_duration_seconds_count", 1.0),
        ("max(chorus_raft_shard_commit_index)", acked),
        ("chorus_storage_disk_size_bytes", 1.0),
        ("chorus_storage_rocksdb_memtable_bytes", 1.0),
        ("chorus_process_resident_memory_bytes", 1e6),
        ("chorus_process_open_fds", 3.0),
        ("chorus_process_start_time_seconds", 1.6e9),
    ] {
        let value = scalar(&prometheus, expr).await.unwrap_or_else(|| panic!("{expr} missing"));
        println!("prometheus: {expr} = {value}");
        assert!(value >= at_least, "{expr} = {value}, expected at least {at_least}");
    }

    // The alert rules are loaded, and on a healthy server nothing fires.
    let rules = reqwest::get(format!("{}/api/v1/rules", prometheus.base))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let loaded: usize = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["rules"].as_array().unwrap().len())
        .sum();
    assert_eq!(loaded, deploy::alert_exprs().len(), "every alert rule is loaded");
    let firing = query(&prometheus, "ALERTS{alertstate=\"firing\"}").await;
    assert_eq!(firing["result"], json!([]), "no alert fires on a healthy server");

    // Every expression the dashboard and the alerts use is valid PromQL for this Prometheus.
    for (panel, expr) in deploy::dashboard_exprs().iter().chain(&deploy::alert_exprs()) {
        let url = format!("{}/api/v1/query?query={}", prometheus.base, enc(expr));
        let answer: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        assert_eq!(answer["status"], "success", "{panel}: {expr}: {answer}");
    }
}
