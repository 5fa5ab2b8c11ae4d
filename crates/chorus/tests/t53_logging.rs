//! Logs: `CHORUS_LOG_FORMAT=json` writes one JSON object per line, `RUST_LOG` filters by
//! target and level, and an event on a request path carries the request's spans with node,
//! shard and stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Api, Server, enc};
use serde_json::{Value, json};

/// The JSON log lines written so far.
fn log_lines(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect()
}

/// A post logged at debug (enabled for `chorus_node` only) carries the edge's request span
/// (operation and stream) and the node's (node id, shard and stream); nothing below `warn`
/// from other targets is written.
#[tokio::test]
async fn json_logs_carry_node_shard_and_stream() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("chorus.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // The edge's request spans live in `chorus_edge::ops`; spans a filter disables are absent.
    let filter = "warn,chorus_node=debug,chorus_edge::ops=debug";
    let env = [("CHORUS_LOG_FORMAT", "json"), ("RUST_LOG", filter)];
    let server = Server::start_logging(&dir.path().join("data"), &env, log);
    let alice = Api::new(&server, server.token("alice", &[]));
    let (status, _) = alice
        .call("POST", "/v1/streams", Some(json!({"type": "Chat/room", "name": "Chat/room/log"})))
        .await;
    assert_eq!(status, 201);
    let messages = format!("/v1/streams/alice/{}/messages", enc("Chat/room/log"));
    let (status, _) =
        alice.call("POST", &messages, Some(json!({"type": "Chat/message", "content": "x"}))).await;
    assert_eq!(status, 201);

    let deadline = Instant::now() + Duration::from_secs(10);
    let answered = loop {
        let lines = log_lines(&log_path);
        if let Some(line) =
            lines.iter().find(|l| l["fields"]["message"] == "post answered").cloned()
        {
            break (line, lines);
        }
        assert!(Instant::now() < deadline, "no `post answered` line in {lines:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (line, lines) = answered;
    assert_eq!(line["level"], "DEBUG");
    assert_eq!(line["fields"]["code"], "ok");
    let spans = line["spans"].as_array().expect("span list");
    let post = spans.iter().find(|s| s["name"] == "post").expect("the node's post span");
    assert_eq!(post["node"], 1);
    assert_eq!(post["stream"], "alice/Chat/room/log");
    assert!(post["shard"].as_u64().is_some_and(|s| s < 8), "{post}");
    let dispatch = spans.iter().find(|s| s["name"] == "dispatch").expect("the edge's span");
    assert_eq!(dispatch["op"], "post");
    // RUST_LOG=warn for everything else: no info line from other crates (startup logs info).
    for other in &lines {
        let target = other["target"].as_str().unwrap_or("");
        let level = other["level"].as_str().unwrap_or("");
        assert!(
            target.starts_with("chorus_node")
                || target.starts_with("chorus_edge::ops")
                || matches!(level, "WARN" | "ERROR"),
            "filtered out by RUST_LOG: {other}"
        );
    }
}
