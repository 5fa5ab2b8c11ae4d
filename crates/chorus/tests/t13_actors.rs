//! Stream actors stop when idle (`actors.idle_ms`); a stream's next request starts a fresh one,
//! which goes on from the stored state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Api, Server, enc, metric};
use serde_json::json;

const ACTORS: &str = "chorus_node_stream_actors";

async fn post(alice: &Api, name: &str, content: &str) -> u64 {
    let path = format!("/v1/streams/alice/{}/messages", enc(name));
    let (s, v) =
        alice.call("POST", &path, Some(json!({"type": "Chat/message", "content": content}))).await;
    assert_eq!(s, 201, "{v}");
    v["ordinal"].as_u64().unwrap()
}

/// Waits until the node runs `want` stream actors.
async fn wait_for_actors(server: &Server, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running = metric(&server.addr, ACTORS).await;
        if running == want {
            return;
        }
        assert!(Instant::now() < deadline, "{running} stream actors, waiting for {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_idle_actor_stops_and_the_next_request_starts_a_fresh_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("chorus.toml");
    // Long enough that the gauge is read before a loaded machine retires the actor.
    std::fs::write(&cfg, "version = 1\n[actors]\nidle_ms = 2000\n").unwrap();
    let server = Server::start_with(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let alice = Api::new(&server, server.token("alice", &[]));
    let name = "Chat/room/idle";
    let (s, v) =
        alice.call("POST", "/v1/streams", Some(json!({"type": "Chat/room", "name": name}))).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(post(&alice, name, "one").await, 2);
    assert_eq!(metric(&server.addr, ACTORS).await, 1.0, "the stream's actor runs");

    wait_for_actors(&server, 0.0).await;
    assert_eq!(post(&alice, name, "two").await, 3, "a fresh actor goes on from the stored state");
    assert_eq!(metric(&server.addr, ACTORS).await, 1.0);

    wait_for_actors(&server, 0.0).await;
    let (s, v) =
        alice.call("GET", &format!("/v1/streams/alice/{}/messages?min=2", enc(name)), None).await;
    assert_eq!(s, 200, "{v}");
    let contents: Vec<_> =
        v["messages"].as_array().unwrap().iter().map(|m| &m["content"]).collect();
    assert_eq!(contents, [&json!("one"), &json!("two")]);
}
