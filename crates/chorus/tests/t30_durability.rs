//! Durability: every acknowledged post survives SIGKILL, and ordinals continue after restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Api, Server, enc};
use serde_json::json;

#[tokio::test]
async fn acknowledged_posts_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let rooms = ["Chat/room/a", "Chat/room/b", "Chat/room/c", "Chat/room/d"];
    for r in rooms {
        let (s, _) =
            alice.call("POST", "/v1/streams", Some(json!({"type": "Chat/room", "name": r}))).await;
        assert_eq!(s, 201);
    }
    // Concurrent posters; record exactly what was acknowledged.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let api = Api::new(&server, server.token("alice", &[]));
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..60 {
                let room = rooms[(w + i) % rooms.len()];
                let id = format!("w{w}-{i}");
                let path = format!("/v1/streams/alice/{}/messages", enc(room));
                let (s, v) = api
                    .call(
                        "POST",
                        &path,
                        Some(json!({"type": "Chat/message", "content": id, "clientMsgId": id})),
                    )
                    .await;
                assert_eq!(s, 201, "{v}");
                acked.push((room, id, v["ordinal"].as_u64().unwrap()));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    server.kill();

    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    for r in rooms {
        let (s, v) = alice
            .call("GET", &format!("/v1/streams/alice/{}/messages?limit=1000", enc(r)), None)
            .await;
        assert_eq!(s, 200);
        let msgs = v["messages"].as_array().unwrap();
        let ords: Vec<u64> = msgs.iter().map(|m| m["ordinal"].as_u64().unwrap()).collect();
        assert_eq!(ords, (1..=ords.len() as u64).collect::<Vec<_>>(), "gap-free after restart");
        for (room, id, ordinal) in acked.iter().filter(|(room, _, _)| *room == r) {
            let m = &msgs[(*ordinal - 1) as usize];
            assert_eq!(
                m["clientMsgId"].as_str(),
                Some(id.as_str()),
                "{room} #{ordinal} lost or moved"
            );
        }
        let (_, s) = alice.call("GET", &format!("/v1/streams/alice/{}", enc(r)), None).await;
        assert_eq!(s["messageCount"].as_u64(), Some(ords.len() as u64));
        // Ordinals continue, and a retry of an acknowledged post still answers its ordinal.
        let path = format!("/v1/streams/alice/{}/messages", enc(r));
        let (st, v) = alice
            .call("POST", &path, Some(json!({"type": "Chat/message", "content": "after"})))
            .await;
        assert_eq!((st, v["ordinal"].as_u64()), (201, Some(ords.len() as u64 + 1)));
        let (room, id, ordinal) = acked.iter().find(|(room, _, _)| *room == r).unwrap();
        let (st, v) = alice
            .call(
                "POST",
                &format!("/v1/streams/alice/{}/messages", enc(room)),
                Some(json!({"type": "Chat/message", "content": id, "clientMsgId": id})),
            )
            .await;
        assert_eq!((st, v["ordinal"].as_u64()), (200, Some(*ordinal)), "dedupe survives restart");
    }
    assert_eq!(acked.len(), 8 * 60);
}

/// With snapshots every 100 entries the log is purged behind them while posts run; after
/// SIGKILL the restart recovers from snapshot state plus the remaining log, and nothing
/// acknowledged is missing.
#[tokio::test]
async fn recovery_after_snapshots_and_log_purge() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("chorus.toml");
    std::fs::write(&cfg, "version = 1\n[raft]\nsnapshot_every_logs = 100\n").unwrap();
    let data = dir.path().join("data");
    let args = ["--config", cfg.to_str().unwrap()];
    let server = Server::start_with(&data, &args);
    let alice = Api::new(&server, server.token("alice", &[]));
    let (s, _) =
        alice.call("POST", "/v1/streams", Some(json!({"type": "Chat/room", "name": "r"}))).await;
    assert_eq!(s, 201);
    let path = format!("/v1/streams/alice/{}/messages", enc("r"));
    for i in 0..400 {
        let (s, v) = alice
            .call("POST", &path, Some(json!({"type": "Chat/message", "content": format!("m{i}")})))
            .await;
        assert_eq!((s, v["ordinal"].as_u64()), (201, Some(i + 2)));
    }
    let snapshots = std::fs::read_dir(data.join("snapshots")).unwrap().count();
    assert!(snapshots >= 1, "a snapshot was built");
    server.kill();

    let server = Server::start_with(&data, &args);
    let alice = Api::new(&server, server.token("alice", &[]));
    let (s, v) = alice.call("GET", &format!("{path}?limit=1000"), None).await;
    assert_eq!(s, 200);
    let contents: Vec<String> = v["messages"].as_array().unwrap()[1..]
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(contents, (0..400).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let (s, v) =
        alice.call("POST", &path, Some(json!({"type": "Chat/message", "content": "after"}))).await;
    assert_eq!((s, v["ordinal"].as_u64()), (201, Some(402)));
}

/// A value nested too deeply to read back once stored must be refused, not acknowledged:
/// stored inside a Raft entry, a value accepted near serde_json's 128-level limit left the
/// node unable to start and its stream's history answering 500. Values nested 32 levels
/// (`MAX_DEPTH`) are accepted everywhere, survive a restart and read back; one level more is
/// `invalid_argument` on every route that takes a client's JSON value.
#[tokio::test]
async fn deeply_nested_values_are_refused_and_the_deepest_accepted_survive_a_restart() {
    fn nested(levels: usize) -> serde_json::Value {
        let mut v = json!({"leaf": true});
        for _ in 1..levels {
            v = json!({"a": v});
        }
        v
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let room = format!("/v1/streams/alice/{}", enc("Chat/room/deep"));
    let create = json!({"type": "Chat/room", "name": "Chat/room/deep", "readLevel": 40,
        "writeLevel": 40, "attributes": nested(32)});
    let (s, v) = alice.call("POST", "/v1/streams", Some(create)).await;
    assert_eq!(s, 201, "{v}");
    let post = |depth: usize| json!({"type": "Chat/message", "instructions": nested(depth)});
    let (s, v) = alice.call("POST", &format!("{room}/messages"), Some(post(32))).await;
    assert_eq!(s, 201, "{v}");
    let bob = Api::new(&server, server.token("bob", &[]));
    let (s, v) =
        bob.call("POST", &format!("{room}/join"), Some(json!({"extra": nested(32)}))).await;
    assert_eq!(s, 200, "{v}");

    let refused = [
        ("POST", "/v1/streams".to_owned(), json!({"type": "Chat/room", "attributes": nested(33)})),
        ("PATCH", room.clone(), json!({"attributes": nested(121)})),
        ("POST", format!("{room}/messages"), post(33)),
        ("POST", format!("{room}/messages"), post(121)),
        ("POST", format!("{room}/join"), json!({"extra": nested(126)})),
    ];
    for (method, path, body) in refused {
        let (s, v) = alice.call(method, &path, Some(body)).await;
        assert_eq!(s, 400, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "invalid_argument", "{v}");
    }
    server.kill();

    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let (s, v) = alice.call("GET", &format!("{room}/messages"), None).await;
    assert_eq!(s, 200, "{v}");
    let messages = v["messages"].as_array().unwrap();
    let types: Vec<&str> = messages.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Streams/created", "Chat/message", "Streams/joined"], "{v}");
    assert_eq!(messages[1]["instructions"], nested(32));
    let (s, v) = alice.call("GET", &room, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["attributes"], nested(32));
}
