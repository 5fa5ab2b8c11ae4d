//! Big rooms end to end against a started `chorus dev`: the app's batch join (exact counts,
//! idempotent, one `Streams/joined` per batch, app only, strict and bounded) and the
//! per-stream rate limit on ephemerals to big rooms (429 with `Retry-After` and
//! `retryAfterMs`), over HTTP and WebSocket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Api, Server, enc, ws_connect, ws_reply, ws_send};
use serde_json::{Value, json};

fn room(n: &str) -> String {
    format!("/v1/streams/alice/{}", enc(n))
}

fn users(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("u{i:05}")).collect()
}

async fn create_room(app: &Api, name: &str) {
    let (s, v) = app
        .call(
            "POST",
            "/v1/streams",
            Some(json!({"publisherId": "alice", "type": "Chat/room", "name": name, "readLevel": 35, "writeLevel": 20})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
}

/// Every participating user id of the room, page by page (`limit` 1000).
async fn all_participants(app: &Api, name: &str) -> (Vec<String>, usize) {
    let (mut ids, mut pages, mut after) = (Vec::new(), 0, None::<String>);
    loop {
        let cursor = after.as_deref().map(|a| format!("&after={}", enc(a))).unwrap_or_default();
        let (s, v) =
            app.call("GET", &format!("{}/participants?limit=1000{cursor}", room(name)), None).await;
        assert_eq!(s, 200, "{v}");
        pages += 1;
        for p in v["participants"].as_array().unwrap() {
            assert_eq!(p["state"], "participating", "{p}");
            ids.push(p["userId"].as_str().unwrap().to_owned());
        }
        match v["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return (ids, pages),
        }
    }
}

/// Two overlapping batches of 1000 give exact counts (the overlap and in-batch repeats count
/// once), the listing pages through every member in userId order, each batch posts one
/// `Streams/joined` naming the users it joined, and a repeated batch changes nothing.
#[tokio::test]
async fn batch_join_counts_exactly_and_lists_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let app = Api::new(&server, server.api_key.clone());
    create_room(&app, "Chat/room/big").await;
    let batch = format!("{}/participants/batch", room("Chat/room/big"));

    let (s, v) = app.call("POST", &batch, Some(json!({"join": users(0..1000)}))).await;
    assert_eq!((s, v.clone()), (200, json!({"joined": 1000, "participantCount": 1000})), "{v}");

    // 500 already in, 498 new; two named twice (one of each kind): 1000 ids.
    let mut second = users(500..1498);
    second.push("u00700".into());
    second.push("u01497".into());
    assert_eq!(second.len(), 1000);
    let (s, v) = app.call("POST", &batch, Some(json!({"join": second}))).await;
    assert_eq!((s, v.clone()), (200, json!({"joined": 498, "participantCount": 1498})), "{v}");

    let (s, v) = app.call("POST", &batch, Some(json!({"join": users(0..10)}))).await;
    assert_eq!((s, v.clone()), (200, json!({"joined": 0, "participantCount": 1498})), "{v}");

    let (ids, pages) = all_participants(&app, "Chat/room/big").await;
    assert_eq!(ids, users(0..1498), "every member once, ordered by userId");
    assert_eq!(pages, 2);
    let (_, v) = app.call("GET", &room("Chat/room/big"), None).await;
    assert_eq!(v["participantCount"], 1498);
    assert_eq!(v["messageCount"], 3, "created + one Streams/joined per batch that joined");

    let (_, v) = app.call("GET", &format!("{}/messages", room("Chat/room/big")), None).await;
    let joined: Vec<&Value> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "Streams/joined")
        .collect();
    assert_eq!(joined.len(), 2, "{v}");
    assert_eq!(joined[0]["byUserId"], "");
    assert_eq!(joined[0]["instructions"]["userIds"].as_array().unwrap().len(), 1000);
    assert_eq!(joined[1]["instructions"]["userIds"].as_array().unwrap().len(), 498);

    // A batch-joined user is an ordinary participant: leaving counts down.
    let mut u0 = Api::new(&server, server.api_key.clone());
    u0.as_user = Some("u00000".into());
    let (s, v) = u0.call("POST", &format!("{}/leave", room("Chat/room/big")), None).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("left")), "{v}");
    let (_, v) = app.call("GET", &room("Chat/room/big"), None).await;
    assert_eq!(v["participantCount"], 1497);
}

/// Only the app may batch-join; the body is strict and bounded; the stream must exist and be
/// open. The WebSocket op `joinBatch` answers what HTTP does.
#[tokio::test]
async fn batch_join_is_app_only_strict_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let app = Api::new(&server, server.api_key.clone());
    create_room(&app, "Chat/room/b").await;
    let batch = format!("{}/participants/batch", room("Chat/room/b"));
    let code = |v: &Value| v["error"]["code"].as_str().map(str::to_owned);

    // Users are refused, even the publisher, even for a stream they cannot see.
    let alice = Api::new(&server, server.token("alice", &[]));
    let (s, v) = alice.call("POST", &batch, Some(json!({"join": ["bob"]}))).await;
    assert_eq!((s, code(&v).as_deref()), (403, Some("forbidden")), "{v}");
    let mut as_bob = Api::new(&server, server.api_key.clone());
    as_bob.as_user = Some("bob".into());
    let (s, v) = as_bob.call("POST", &batch, Some(json!({"join": ["bob"]}))).await;
    assert_eq!((s, code(&v).as_deref()), (403, Some("forbidden")), "{v}");
    let hidden = format!("{}/participants/batch", room("Chat/room/none"));
    let (s, _) = as_bob.call("POST", &hidden, Some(json!({"join": ["bob"]}))).await;
    assert_eq!(s, 403);

    let (s, v) = app.call("POST", &batch, Some(json!({"join": users(0..1001)}))).await;
    assert_eq!((s, code(&v).as_deref()), (413, Some("too_large")), "{v}");
    let (s, v) = app.call("POST", &batch, Some(json!({"join": ["bob"], "extra": {}}))).await;
    assert_eq!((s, code(&v).as_deref()), (400, Some("invalid_argument")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("extra"), "{v}");
    let (s, v) = app.call("POST", &batch, Some(json!({"join": ["bob", "not valid"]}))).await;
    assert_eq!((s, code(&v).as_deref()), (400, Some("invalid_argument")), "{v}");
    let (s, v) = app.call("POST", &batch, Some(json!({"join": []}))).await;
    assert_eq!((s, code(&v).as_deref()), (400, Some("invalid_argument")), "{v}");
    let (s, v) = app.call("POST", &batch, None).await;
    assert_eq!((s, code(&v).as_deref()), (400, Some("invalid_argument")), "{v}");
    let (s, v) = app.call("POST", &hidden, Some(json!({"join": ["bob"]}))).await;
    assert_eq!((s, code(&v).as_deref()), (404, Some("not_found")), "{v}");
    let (_, v) = app.call("GET", &room("Chat/room/b"), None).await;
    assert_eq!(v["participantCount"], 0, "nothing refused was applied");

    // WebSocket: the same op, the same body.
    let mut ws = ws_connect(&server, &server.api_key).await;
    let stream = json!({"publisherId": "alice", "name": "Chat/room/b"});
    ws_send(
        &mut ws,
        json!({"id": 1, "op": "joinBatch", "stream": stream, "join": ["bob", "carol"]}),
    )
    .await;
    let reply = ws_reply(&mut ws, 1).await;
    assert_eq!(reply["ok"], json!({"joined": 2, "participantCount": 2}), "{reply}");
    ws_send(
        &mut ws,
        json!({"id": 2, "op": "joinBatch", "stream": stream, "join": ["x"], "bogus": 1}),
    )
    .await;
    let reply = ws_reply(&mut ws, 2).await;
    assert_eq!(reply["error"]["code"], "invalid_argument", "{reply}");

    let (s, _) = app.call("DELETE", &room("Chat/room/b"), None).await;
    assert_eq!(s, 200);
    let (s, v) = app.call("POST", &batch, Some(json!({"join": ["dave"]}))).await;
    assert_eq!((s, code(&v).as_deref()), (409, Some("conflict")), "{v}");
}

/// An ephemeral POST as the app: status, `Retry-After` header and body.
async fn ephemeral(server: &Server, name: &str) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(server.url(&format!("{}/ephemeral", room(name))))
        .bearer_auth(&server.api_key)
        .json(&json!({"type": "Chat/typing", "payload": {"on": true}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|h| h.to_str().unwrap().to_owned());
    let body = response.text().await.unwrap();
    (status, retry_after, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// With `[ephemerals]` big above 10 participants, 1/s, burst 5: the big room accepts its burst
/// and then answers 429 `rate_limited` with `Retry-After` and `retryAfterMs` (HTTP and
/// WebSocket), counted in `chorus_node_ephemerals_rate_limited_total`; a room at the threshold
/// is never limited.
#[tokio::test]
async fn ephemerals_to_big_rooms_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("chorus.toml");
    std::fs::write(
        &cfg,
        "version = 1\n[ephemerals]\nbig_room_participants = 10\nbig_room_per_second = 1\nbig_room_burst = 5\n",
    )
    .unwrap();
    let server = Server::start_with(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()]);
    let app = Api::new(&server, server.api_key.clone());
    for (name, members) in [("Chat/room/big", 11), ("Chat/room/small", 10)] {
        create_room(&app, name).await;
        let batch = format!("{}/participants/batch", room(name));
        let (s, v) = app.call("POST", &batch, Some(json!({"join": users(0..members)}))).await;
        assert_eq!((s, v["participantCount"].as_u64()), (200, Some(u64::from(members))), "{v}");
    }

    for _ in 0..30 {
        let (s, _, v) = ephemeral(&server, "Chat/room/small").await;
        assert_eq!(s, 202, "a room at the threshold is not limited: {v}");
    }

    for k in 0..5 {
        let (s, _, v) = ephemeral(&server, "Chat/room/big").await;
        assert_eq!(s, 202, "ephemeral {k} of the burst: {v}");
    }
    // The bucket refills at 1/s; 30 quick requests cannot all find a token.
    let mut limited = None;
    for _ in 0..30 {
        let (s, retry_after, v) = ephemeral(&server, "Chat/room/big").await;
        if s == 429 {
            limited = Some((retry_after, v));
            break;
        }
    }
    let (retry_after, v) = limited.expect("the big room was never rate limited");
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    let ms = v["error"]["retryAfterMs"].as_u64().unwrap();
    assert!((1..=1000).contains(&ms), "{v}");
    assert_eq!(retry_after.as_deref(), Some("1"), "Retry-After in whole seconds, rounded up");

    let mut ws = ws_connect(&server, &server.api_key).await;
    let stream = json!({"publisherId": "alice", "name": "Chat/room/big"});
    let mut ws_limited = None;
    for id in 1..=30u64 {
        ws_send(
            &mut ws,
            json!({"id": id, "op": "ephemeral", "stream": stream, "type": "Chat/typing", "payload": {}}),
        )
        .await;
        let reply = ws_reply(&mut ws, id).await;
        if reply.get("error").is_some() {
            ws_limited = Some(reply);
            break;
        }
    }
    let reply = ws_limited.expect("the big room was never rate limited over WebSocket");
    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
    assert!(reply["error"]["retryAfterMs"].as_u64().is_some(), "{reply}");

    let text = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("chorus_node_ephemerals_rate_limited_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("metric exported");
    assert!(count >= 2.0, "{count}");
}
