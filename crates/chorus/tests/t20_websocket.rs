//! WebSocket end to end: requests and replies, listen with `since` under concurrent posts,
//! ephemerals, and malformed frames.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{Api, Server, enc, ws_connect, ws_next, ws_reply, ws_send};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// A listener that starts with `since` while posts are running receives every ordinal after
/// `since` exactly once, in order: backlog, then live, with no gap at the switch.
#[tokio::test]
async fn listen_since_during_concurrent_posts_is_gap_free() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let token = server.token("alice", &[]);
    let mut ws = ws_connect(&server, &token).await;
    let stream = json!({"publisherId": "alice", "name": "Chat/room/live"});
    ws_send(&mut ws, json!({"id": 1, "op": "create", "type": "Chat/room", "name": "Chat/room/live", "readLevel": 35, "writeLevel": 20})).await;
    let v = ws_reply(&mut ws, 1).await;
    assert_eq!(v["ok"]["name"], "Chat/room/live", "{v}");

    // 150 posts before the listener, 150 concurrent with it, from 3 writers.
    let api = Api::new(&server, token.clone());
    let path = format!("/v1/streams/alice/{}/messages", enc("Chat/room/live"));
    for i in 0..150 {
        let (s, _) = api
            .call(
                "POST",
                &path,
                Some(json!({"type": "Chat/message", "content": format!("pre {i}")})),
            )
            .await;
        assert_eq!(s, 201);
    }
    let mut writers = Vec::new();
    for w in 0..3 {
        let api = Api::new(&server, server.token(&format!("w{w}"), &[]));
        let path = path.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..50 {
                let (s, v) = api
                    .call(
                        "POST",
                        &path,
                        Some(json!({"type": "Chat/message", "content": format!("w{w} {i}")})),
                    )
                    .await;
                assert_eq!(s, 201, "{v}");
            }
        }));
    }
    let mut listener = ws_connect(&server, &server.token("bob", &[])).await;
    ws_send(&mut listener, json!({"id": 9, "op": "listen", "stream": stream, "since": 40})).await;
    let ok = ws_next(&mut listener).await;
    assert_eq!(ok["re"], 9, "the ok comes before any event: {ok}");
    assert_eq!(ok["ok"]["recovered"], true);
    for w in writers {
        w.await.unwrap();
    }
    let total = 1 + 150 + 150;
    let mut expected = 41u64;
    while expected <= total {
        let ev = ws_next(&mut listener).await;
        assert_eq!(ev["ev"], "message", "{ev}");
        assert_eq!(ev["message"]["ordinal"].as_u64(), Some(expected), "in order, once");
        expected += 1;
    }
    // And the live tail keeps working.
    let (s, _) =
        api.call("POST", &path, Some(json!({"type": "Chat/message", "content": "after"}))).await;
    assert_eq!(s, 201);
    let ev = ws_next(&mut listener).await;
    assert_eq!(ev["message"]["ordinal"].as_u64(), Some(total + 1));
}

/// Ops over WebSocket mirror HTTP; `listen` without `since` starts from now; ephemerals reach
/// the other listeners but not their sender.
#[tokio::test]
async fn ops_and_ephemerals() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut a = ws_connect(&server, &server.token("alice", &[])).await;
    let mut b = ws_connect(&server, &server.token("bob", &[])).await;
    let stream = json!({"publisherId": "alice", "name": "r"});
    ws_send(&mut a, json!({"id": 1, "op": "create", "type": "Chat/room", "name": "r", "readLevel": 35, "writeLevel": 20})).await;
    assert!(ws_reply(&mut a, 1).await.get("ok").is_some());
    ws_send(&mut b, json!({"id": "j", "op": "join", "stream": stream})).await;
    let v = ws_reply_str(&mut b, "j").await;
    assert_eq!(v["ok"]["state"], "participating", "{v}");
    ws_send(&mut a, json!({"id": 2, "op": "listen", "stream": stream})).await;
    let v = ws_reply(&mut a, 2).await;
    assert_eq!(v["ok"]["messageCount"], 2);
    ws_send(&mut b, json!({"id": 3, "op": "listen", "stream": stream})).await;
    ws_reply(&mut b, 3).await;

    ws_send(&mut b, json!({"id": 4, "op": "post", "stream": stream, "type": "Chat/message", "content": "hello", "clientMsgId": "x1"})).await;
    let v = ws_reply(&mut b, 4).await;
    assert_eq!(v["ok"]["ordinal"], 3, "{v}");
    let ev = ws_next(&mut a).await;
    assert_eq!(
        (ev["ev"].as_str(), ev["message"]["content"].as_str()),
        (Some("message"), Some("hello"))
    );

    ws_send(&mut b, json!({"id": 5, "op": "ephemeral", "stream": stream, "type": "Chat/typing", "payload": {"on": true}})).await;
    let ev = ws_next(&mut a).await;
    assert_eq!(ev["ev"], "ephemeral", "{ev}");
    assert_eq!(ev["byUserId"], "bob");
    assert_eq!(ev["payload"], json!({"on": true}));

    ws_send(
        &mut a,
        json!({"id": 6, "op": "messages", "stream": stream, "order": "desc", "limit": 1}),
    )
    .await;
    let v = ws_reply(&mut a, 6).await;
    assert_eq!(v["ok"]["messages"][0]["ordinal"], 3);
    ws_send(&mut a, json!({"id": 7, "op": "ping"})).await;
    assert_eq!(ws_reply(&mut a, 7).await["ok"], json!({}));
    // b's own stream of frames: the reply to 5, and no ephemeral echo before the next reply.
    ws_send(&mut b, json!({"id": 8, "op": "ping"})).await;
    loop {
        let v = ws_next(&mut b).await;
        assert_ne!(v["ev"], "ephemeral", "the sender does not get its own ephemeral");
        if v["re"] == 8 {
            break;
        }
    }
    // `Streams/` types are the server's, and a closed stream relays nothing.
    ws_send(
        &mut b,
        json!({"id": 9, "op": "ephemeral", "stream": stream, "type": "Streams/closed"}),
    )
    .await;
    assert_eq!(ws_reply(&mut b, 9).await["error"]["code"], "forbidden");
    ws_send(&mut a, json!({"id": 10, "op": "close", "stream": stream})).await;
    assert!(ws_reply(&mut a, 10).await.get("ok").is_some());
    ws_send(&mut b, json!({"id": 11, "op": "ephemeral", "stream": stream, "type": "Chat/typing"}))
        .await;
    assert_eq!(ws_reply(&mut b, 11).await["error"]["code"], "conflict");
}

async fn ws_reply_str(ws: &mut common::Ws, id: &str) -> serde_json::Value {
    loop {
        let v = ws_next(ws).await;
        if v["re"] == id {
            return v;
        }
    }
}

/// Malformed frames get an error frame and the connection stays open; no token, no upgrade.
#[tokio::test]
async fn malformed_frames_and_auth() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut ws = ws_connect(&server, &server.token("alice", &[])).await;
    let mut codes = BTreeSet::new();
    ws.send_text("not json").await;
    let v = ws_next(&mut ws).await;
    assert_eq!(v["re"], json!(null));
    codes.insert(v["error"]["code"].as_str().unwrap().to_owned());
    ws_send(&mut ws, json!({"id": 1, "op": "teleport"})).await;
    let v = ws_reply(&mut ws, 1).await;
    codes.insert(v["error"]["code"].as_str().unwrap().to_owned());
    ws_send(&mut ws, json!({"id": 2, "op": "fetch", "stream": {"publisherId": "alice", "name": "r"}, "extra": 1})).await;
    let v = ws_reply(&mut ws, 2).await;
    codes.insert(v["error"]["code"].as_str().unwrap().to_owned());
    assert_eq!(codes, BTreeSet::from(["invalid_argument".to_owned()]));
    ws_send(
        &mut ws,
        json!({"id": 3, "op": "fetch", "stream": {"publisherId": "alice", "name": "nope"}}),
    )
    .await;
    assert_eq!(ws_reply(&mut ws, 3).await["error"]["code"], "not_found");
    ws_send(&mut ws, json!({"id": 4, "op": "ping"})).await;
    assert!(ws_reply(&mut ws, 4).await.get("ok").is_some(), "connection still open");

    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let req = format!("ws://{}/v1/ws", server.addr).into_client_request().unwrap();
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!(
            "upgrade without a token must be refused, got {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    let req = format!("ws://{}/v1/ws?token={}", server.addr, server.token("alice", &[]))
        .into_client_request()
        .unwrap();
    assert!(tokio_tungstenite::connect_async(req).await.is_ok(), "?token= works for browsers");
}

trait SendText {
    async fn send_text(&mut self, t: &str);
}

impl SendText for common::Ws {
    async fn send_text(&mut self, t: &str) {
        use futures_util::SinkExt;
        self.send(tokio_tungstenite::tungstenite::Message::text(t.to_owned())).await.unwrap();
    }
}

/// The code of the close frame the server sends next, skipping other frames; `None` when the
/// connection ends without one or nothing comes within `secs` seconds.
async fn close_code(ws: &mut common::Ws, secs: u64) -> Option<u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(secs), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => return Some(u16::from(frame.code)),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// A message over the size limit closes the session with 1009 (message too big).
#[tokio::test]
async fn oversize_message_closes_with_1009() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut ws = ws_connect(&server, &server.token("alice", &[])).await;
    let big = format!("{{\"id\":1,\"op\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(2 << 20));
    // The server may close while the frame is still being written.
    let _ = ws.send(Message::text(big)).await;
    assert_eq!(close_code(&mut ws, 10).await, Some(1009));
}

/// "`exp` is enforced": a session does not outlive its token. It is served until then and is
/// closed with 1008 when the token expires.
#[tokio::test]
async fn session_closes_with_1008_when_its_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut ws = ws_connect(&server, &server.token_for("alice", &[], 2)).await;
    ws_send(&mut ws, json!({"id": 1, "op": "ping"})).await;
    assert!(ws_reply(&mut ws, 1).await.get("ok").is_some());
    assert_eq!(close_code(&mut ws, 15).await, Some(1008));
}

/// `update` with a stale `ifMessageCount` changes nothing and answers `conflict` with the
/// current stream beside the error, as `PATCH` does: the frame the SDK's conflict hand-off
/// reads.
#[tokio::test]
async fn stale_if_message_count_is_a_conflict_carrying_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut ws = ws_connect(&server, &server.token("alice", &[])).await;
    let stream = json!({"publisherId": "alice", "name": "r"});
    ws_send(&mut ws, json!({"id": 1, "op": "create", "type": "Chat/room", "name": "r"})).await;
    assert!(ws_reply(&mut ws, 1).await.get("ok").is_some());
    ws_send(
        &mut ws,
        json!({"id": 2, "op": "post", "stream": stream, "type": "Chat/message", "content": "x"}),
    )
    .await;
    assert_eq!(ws_reply(&mut ws, 2).await["ok"]["ordinal"], 2);

    ws_send(
        &mut ws,
        json!({"id": 3, "op": "update", "stream": stream, "title": "Stale", "ifMessageCount": 1}),
    )
    .await;
    let v = ws_reply(&mut ws, 3).await;
    assert_eq!(v["error"]["code"], "conflict", "{v}");
    assert_eq!(v["stream"]["messageCount"], 2, "the current stream is beside the error: {v}");
    assert_eq!(v["stream"]["name"], "r");

    ws_send(
        &mut ws,
        json!({"id": 4, "op": "update", "stream": stream, "title": "Fresh", "ifMessageCount": 2}),
    )
    .await;
    let v = ws_reply(&mut ws, 4).await;
    assert_eq!(
        (v["ok"]["title"].as_str(), v["ok"]["messageCount"].as_u64()),
        (Some("Fresh"), Some(3)),
        "{v}"
    );
}

/// The protocol layer, now that the edge writes frames itself: a ping gets a pong with its
/// payload, a fragmented text message is one request, and a client's close gets a close
/// reply, after which the server ends the connection.
#[tokio::test]
async fn ping_fragments_and_close_handshake() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut ws = ws_connect(&server, &server.token("alice", &[])).await;
    let wait = std::time::Duration::from_secs(10);

    ws.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(wait, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(pong, Message::Pong(b"are you there".to_vec().into()));

    let request = br#"{"id":7,"op":"ping"}"#;
    let (first, rest) = request.split_at(9);
    let part = |opcode, fin: bool, payload: &[u8]| {
        let header = FrameHeader { is_final: fin, opcode, ..FrameHeader::default() };
        Message::Frame(Frame::from_payload(header, payload.to_vec().into()))
    };
    ws.send(part(OpCode::Data(Data::Text), false, first)).await.unwrap();
    ws.send(part(OpCode::Data(Data::Continue), true, rest)).await.unwrap();
    let v = ws_reply(&mut ws, 7).await;
    assert_eq!(v["ok"], json!({}), "{v}");

    let bye = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
    ws.send(Message::Close(Some(bye))).await.unwrap();
    let reply = match tokio::time::timeout(wait, ws.next()).await.unwrap() {
        Some(Ok(Message::Close(frame))) => frame,
        other => panic!("nothing but the close reply may follow: {other:?}"),
    };
    assert_eq!(reply.map(|f| f.code), Some(CloseCode::Normal));
    let end = tokio::time::timeout(wait, ws.next()).await.unwrap();
    assert!(end.is_none(), "the connection ends after the handshake: {end:?}");
}

/// A frame that breaks RFC 6455 (here a reserved opcode) closes the session with 1002.
#[tokio::test]
async fn protocol_error_closes_with_1002() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut ws = ws_connect(&server, &server.token("alice", &[])).await;
    let header = FrameHeader { opcode: OpCode::Data(Data::Reserved(3)), ..FrameHeader::default() };
    ws.send(Message::Frame(Frame::from_payload(header, b"?".to_vec().into()))).await.unwrap();
    let code = match tokio::time::timeout(std::time::Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => Some(frame.code),
        other => panic!("expected a close frame: {other:?}"),
    };
    assert_eq!(code, Some(CloseCode::Protocol));
}

/// "Reading messages and `listen` need messages (35)" holds for listens already open: taking
/// a listener's read access away — by its access row or by the stream's level — ends the
/// listen with a `resync` before anything posted after the change reaches it; a listener who
/// keeps access keeps listening.
#[tokio::test]
async fn revoking_read_access_ends_open_listens_before_the_next_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    for (name, read_level) in [("Chat/room/rows", 0), ("Chat/room/level", 35)] {
        let create = json!({"type": "Chat/room", "name": name, "readLevel": read_level});
        let (s, v) = alice.call("POST", "/v1/streams", Some(create)).await;
        assert_eq!(s, 201, "{v}");
    }
    let rows_path = format!("/v1/streams/alice/{}", enc("Chat/room/rows"));
    let level_path = format!("/v1/streams/alice/{}", enc("Chat/room/level"));
    let bob_row = json!({"rows": [
        {"ofUserId": "bob", "readLevel": 35},
        {"ofUserId": "carol", "readLevel": 35}
    ]});
    let (s, v) = alice.call("PUT", &format!("{rows_path}/access"), Some(bob_row)).await;
    assert_eq!(s, 200, "{v}");

    let mut bob = ws_connect(&server, &server.token("bob", &[])).await;
    let mut carol = ws_connect(&server, &server.token("carol", &[])).await;
    for (i, name) in ["Chat/room/rows", "Chat/room/level"].into_iter().enumerate() {
        let listen =
            json!({"id": i, "op": "listen", "stream": {"publisherId": "alice", "name": name}});
        ws_send(&mut bob, listen.clone()).await;
        assert!(ws_reply(&mut bob, i as u64).await.get("ok").is_some());
        ws_send(&mut carol, listen).await;
        assert!(ws_reply(&mut carol, i as u64).await.get("ok").is_some());
    }
    let post = |text: &str| json!({"type": "Chat/message", "content": text});
    let (s, _) = alice.call("POST", &format!("{rows_path}/messages"), Some(post("before"))).await;
    assert_eq!(s, 201);
    let ev = ws_next(&mut bob).await;
    assert_eq!(ev["message"]["content"], "before", "{ev}");

    // Bob's row goes; carol's stays. Then the stream's level drops below messages.
    let carol_only = json!({"rows": [{"ofUserId": "carol", "readLevel": 35}]});
    let (s, v) = alice.call("PUT", &format!("{rows_path}/access"), Some(carol_only)).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = alice.call("POST", &format!("{rows_path}/messages"), Some(post("after"))).await;
    assert_eq!(s, 201);
    let (s, v) = alice.call("PATCH", &level_path, Some(json!({"readLevel": 10}))).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = alice.call("POST", &format!("{level_path}/messages"), Some(post("after"))).await;
    assert_eq!(s, 201);

    let mut resynced = BTreeSet::new();
    while resynced.len() < 2 {
        let ev = ws_next(&mut bob).await;
        assert_ne!(ev["message"]["content"], "after", "bob lost read access: {ev}");
        assert_ne!(ev["message"]["type"], "Streams/changed", "bob lost read access: {ev}");
        if ev["ev"] == "resync" {
            resynced.insert(ev["stream"]["name"].as_str().unwrap().to_owned());
        }
    }
    // Carol keeps `rows` (her row stands) and loses `level` (she had only the public level).
    let mut carol_got = Vec::new();
    while carol_got.len() < 2 {
        let ev = ws_next(&mut carol).await;
        match ev["ev"].as_str() {
            Some("message") if ev["message"]["content"] == "after" => carol_got.push("rows after"),
            Some("resync") => carol_got.push("level resync"),
            _ => {}
        }
    }
    carol_got.sort_unstable();
    assert_eq!(carol_got, ["level resync", "rows after"]);
    let bob_api = Api::new(&server, server.token("bob", &[]));
    let (s, v) = bob_api.call("GET", &format!("{rows_path}/messages"), None).await;
    assert_eq!(s, 404, "{v}");
}

/// The same through a `<type>*` rule: dropping the rule row that let a user read ends the
/// user's open listens of that publisher's streams of the type.
#[tokio::test]
async fn revoking_a_type_rule_row_ends_open_listens() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let create = json!({"type": "Chat/room", "name": "Chat/room/ruled", "readLevel": 0});
    let (s, v) = alice.call("POST", "/v1/streams", Some(create)).await;
    assert_eq!(s, 201, "{v}");
    let rule = format!("/v1/streams/alice/{}/access", enc("Chat/room*"));
    let bob_row = json!({"rows": [{"ofUserId": "bob", "readLevel": 35}]});
    let (s, v) = alice.call("PUT", &rule, Some(bob_row)).await;
    assert_eq!(s, 200, "{v}");

    let mut bob = ws_connect(&server, &server.token("bob", &[])).await;
    let listen = json!({"id": 1, "op": "listen", "stream": {"publisherId": "alice", "name": "Chat/room/ruled"}});
    ws_send(&mut bob, listen).await;
    let ok = ws_reply(&mut bob, 1).await;
    assert!(ok.get("ok").is_some(), "the rule lets bob read: {ok}");

    let (s, v) = alice.call("PUT", &rule, Some(json!({"rows": []}))).await;
    assert_eq!(s, 200, "{v}");
    let path = format!("/v1/streams/alice/{}/messages", enc("Chat/room/ruled"));
    let post = json!({"type": "Chat/message", "content": "after"});
    let (s, _) = alice.call("POST", &path, Some(post)).await;
    assert_eq!(s, 201);
    let ev = ws_next(&mut bob).await;
    assert_eq!(ev["ev"], "resync", "bob's listen ends before the message: {ev}");
}

/// The same through `inheritAccess`: taking away the parent's row that let a user read the
/// child ends the user's open listen of the child before anything posted after the change;
/// a listener with a row of its own on the child keeps listening.
#[tokio::test]
async fn revoking_an_inherited_parent_row_ends_open_listens_of_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let parent = json!({"type": "Chat/org", "name": "Chat/org/1", "readLevel": 0});
    let (s, v) = alice.call("POST", "/v1/streams", Some(parent)).await;
    assert_eq!(s, 201, "{v}");
    let parent_access = format!("/v1/streams/alice/{}/access", enc("Chat/org/1"));
    let bob_row = json!({"rows": [{"ofUserId": "bob", "readLevel": 35}]});
    let (s, v) = alice.call("PUT", &parent_access, Some(bob_row)).await;
    assert_eq!(s, 200, "{v}");
    let child = json!({"type": "Chat/room", "name": "Chat/room/kid", "readLevel": 0,
        "inheritAccess": [{"publisherId": "alice", "name": "Chat/org/1"}]});
    let (s, v) = alice.call("POST", "/v1/streams", Some(child)).await;
    assert_eq!(s, 201, "{v}");
    let child_path = format!("/v1/streams/alice/{}", enc("Chat/room/kid"));
    let carol_row = json!({"rows": [{"ofUserId": "carol", "readLevel": 35}]});
    let (s, v) = alice.call("PUT", &format!("{child_path}/access"), Some(carol_row)).await;
    assert_eq!(s, 200, "{v}");

    let listen = json!({"id": 1, "op": "listen", "stream": {"publisherId": "alice", "name": "Chat/room/kid"}});
    let mut bob = ws_connect(&server, &server.token("bob", &[])).await;
    ws_send(&mut bob, listen.clone()).await;
    let ok = ws_reply(&mut bob, 1).await;
    assert!(ok.get("ok").is_some(), "the parent lets bob read the child: {ok}");
    let mut carol = ws_connect(&server, &server.token("carol", &[])).await;
    ws_send(&mut carol, listen).await;
    assert!(ws_reply(&mut carol, 1).await.get("ok").is_some());

    let (s, v) = alice.call("PUT", &parent_access, Some(json!({"rows": []}))).await;
    assert_eq!(s, 200, "{v}");
    let post = json!({"type": "Chat/message", "content": "after"});
    let (s, _) = alice.call("POST", &format!("{child_path}/messages"), Some(post)).await;
    assert_eq!(s, 201);
    let ev = ws_next(&mut bob).await;
    assert_eq!(ev["ev"], "resync", "bob's listen ends before the message: {ev}");
    let ev = ws_next(&mut carol).await;
    assert_eq!(ev["message"]["content"], "after", "carol keeps her own row: {ev}");
    let bob_api = Api::new(&server, server.token("bob", &[]));
    let (s, v) = bob_api.call("GET", &format!("{child_path}/messages"), None).await;
    assert_eq!(s, 404, "{v}");
}

/// "Requests that act on the same stream take effect in the order the session sent them":
/// a create, pipelined posts and alternating join/leave, all sent before any reply is read,
/// land in send order — the posts' ordinals follow their order, the stream exists for the
/// first post, and the last of the joins and leaves decides the state.
#[tokio::test]
async fn pipelined_requests_on_one_stream_take_effect_in_send_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut a = ws_connect(&server, &server.token("alice", &[])).await;
    let mut b = ws_connect(&server, &server.token("bob", &[])).await;
    let stream = json!({"publisherId": "alice", "name": "Chat/room/piped"});
    ws_send(&mut a, json!({"id": 0, "op": "create", "type": "Chat/room", "name": "Chat/room/piped", "readLevel": 40, "writeLevel": 40})).await;
    const POSTS: u64 = 40;
    for i in 1..=POSTS {
        let post = json!({"id": i, "op": "post", "stream": stream, "type": "Chat/message", "content": i.to_string()});
        ws_send(&mut a, post).await;
    }
    let mut ordinals = std::collections::BTreeMap::new();
    while ordinals.len() < POSTS as usize {
        let v = ws_next(&mut a).await;
        if let Some(re) = v["re"].as_u64().filter(|re| *re >= 1) {
            assert!(v.get("ok").is_some(), "post {re} refused: {v}");
            ordinals.insert(re, v["ok"]["ordinal"].as_u64().unwrap());
        }
    }
    // Ordinal 1 is `Streams/created`: post i got ordinal i + 1.
    for (i, ordinal) in ordinals {
        assert_eq!(ordinal, i + 1, "post {i} out of send order");
    }
    // Bob ends on a leave, then on a join.
    for (round, last) in [(0u64, "leave"), (1, "join")] {
        let ops = ["join", "leave", "join", "leave", "join", "leave", "join", "leave"];
        let ops: Vec<&str> = if last == "join" {
            ops[1..].iter().chain(["join"].iter()).copied().collect()
        } else {
            ops.to_vec()
        };
        for (i, op) in ops.iter().enumerate() {
            ws_send(&mut b, json!({"id": round * 100 + i as u64, "op": op, "stream": stream}))
                .await;
        }
        let last_id = round * 100 + ops.len() as u64 - 1;
        let mut answered = 0;
        while answered < ops.len() {
            let v = ws_next(&mut b).await;
            if v.get("re").is_some() {
                answered += 1;
                assert!(v.get("ok").is_some() || v["re"] != json!(last_id), "{v}");
            }
        }
        let alice = Api::new(&server, server.token("alice", &[]));
        let (s, v) =
            alice.call("GET", &format!("/v1/streams/alice/{}", enc("Chat/room/piped")), None).await;
        assert_eq!(s, 200, "{v}");
        let expected = u64::from(last == "join");
        assert_eq!(v["participantCount"], expected, "after a pipelined run ending on {last}: {v}");
    }
}

/// A session's next request on a stream starts once the stream's actor has queued the one
/// before it, not once that one committed: posts one session pipelines to one stream travel
/// many to a Raft entry (one entry each would cap a client at one post per commit), still in
/// send order.
#[tokio::test]
async fn pipelined_posts_on_one_stream_share_raft_entries() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut a = ws_connect(&server, &server.token("alice", &[])).await;
    let stream = json!({"publisherId": "alice", "name": "Chat/room/burst"});
    ws_send(
        &mut a,
        json!({"id": 0, "op": "create", "type": "Chat/room", "name": "Chat/room/burst"}),
    )
    .await;
    let created = ws_next(&mut a).await;
    assert!(created.get("ok").is_some(), "{created}");
    let before = common::metric(&server.addr, "chorus_node_batch_commands_count").await;
    const POSTS: u64 = 200;
    // One burst (one flush), so the server cannot commit each before the next arrives.
    for i in 1..=POSTS {
        let post = json!({"id": i, "op": "post", "stream": stream, "type": "Chat/message", "content": i.to_string()});
        a.feed(Message::text(post.to_string())).await.unwrap();
    }
    a.flush().await.unwrap();
    let mut answered = 0;
    while answered < POSTS {
        let v = ws_next(&mut a).await;
        let re = v["re"].as_u64().expect("a reply");
        assert_eq!(v["ok"]["ordinal"].as_u64(), Some(re + 1), "post {re} out of send order: {v}");
        answered += 1;
    }
    let entries = common::metric(&server.addr, "chorus_node_batch_commands_count").await - before;
    assert!(entries <= (POSTS / 2) as f64, "{POSTS} pipelined posts took {entries} Raft entries");
}

/// A pipelined request is checked against what the session's earlier requests on the stream
/// did, even when they were queued together: an owner's post sent after she lowered her own
/// row below the post level is refused, though that change was still committing when the
/// post reached the stream.
#[tokio::test]
async fn a_pipelined_post_sees_the_levels_its_session_changed_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let (s, v) = alice
        .call("POST", "/v1/streams", Some(json!({"type": "Chat/room", "name": "Chat/room/gate", "readLevel": 40, "writeLevel": 0})))
        .await;
    assert_eq!(s, 201, "{v}");
    let path = format!("/v1/streams/alice/{}/access", enc("Chat/room/gate"));
    let (s, v) = alice
        .call(
            "PUT",
            &path,
            Some(json!({"rows": [{"ofUserId": "mia", "writeLevel": 20, "adminLevel": 40}]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut mia = ws_connect(&server, &server.token("mia", &[])).await;
    let stream = json!({"publisherId": "alice", "name": "Chat/room/gate"});
    const POSTS: u64 = 30;
    for i in 1..=POSTS {
        let post = json!({"id": i, "op": "post", "stream": stream, "type": "Chat/message", "content": i.to_string()});
        ws_send(&mut mia, post).await;
    }
    let lower = json!({"id": 100, "op": "setAccess", "stream": stream, "rows": [{"ofUserId": "mia", "writeLevel": 10, "adminLevel": 40}]});
    ws_send(&mut mia, lower).await;
    let late = json!({"id": 101, "op": "post", "stream": stream, "type": "Chat/message", "content": "late"});
    ws_send(&mut mia, late).await;
    let mut replies = std::collections::BTreeMap::new();
    while replies.len() < POSTS as usize + 2 {
        let v = ws_next(&mut mia).await;
        replies.insert(v["re"].as_u64().expect("a reply"), v);
    }
    for i in 1..=POSTS {
        assert!(replies[&i].get("ok").is_some(), "post {i}: {}", replies[&i]);
    }
    assert!(replies[&100].get("ok").is_some(), "lowering her row: {}", replies[&100]);
    assert_eq!(replies[&101]["error"]["code"], "forbidden", "the post after it: {}", replies[&101]);
}

/// A read pipelined behind a session's posts to the stream sees every one of them: writes go
/// on as soon as the one before is queued, but a read waits for every one before it to be
/// done, even when the last of them was refused at once.
#[tokio::test]
async fn a_pipelined_read_sees_the_posts_sent_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut a = ws_connect(&server, &server.token("alice", &[])).await;
    let stream = json!({"publisherId": "alice", "name": "Chat/room/ryw"});
    ws_send(&mut a, json!({"id": 0, "op": "create", "type": "Chat/room", "name": "Chat/room/ryw"}))
        .await;
    const POSTS: u64 = 20;
    for i in 1..=POSTS {
        let post = json!({"id": i, "op": "post", "stream": stream, "type": "Chat/message", "content": i.to_string()});
        ws_send(&mut a, post).await;
    }
    // Refused before it reaches the stream (over the 64 KiB message limit), so done while the
    // posts still commit:
    // the reads behind it wait for those too.
    let oversize = "x".repeat(70_000);
    ws_send(&mut a, json!({"id": 99, "op": "post", "stream": stream, "type": "Chat/message", "content": oversize})).await;
    ws_send(&mut a, json!({"id": 100, "op": "fetch", "stream": stream})).await;
    ws_send(
        &mut a,
        json!({"id": 101, "op": "messages", "stream": stream, "order": "desc", "limit": 1}),
    )
    .await;
    let mut replies = std::collections::BTreeMap::new();
    while replies.len() < POSTS as usize + 4 {
        let v = ws_next(&mut a).await;
        replies.insert(v["re"].as_u64().expect("a reply"), v);
    }
    assert!(replies[&99].get("error").is_some(), "the oversize post: {}", replies[&99]);
    assert!(replies[&0].get("ok").is_some(), "create: {}", replies[&0]);
    assert!(replies[&1].get("ok").is_some(), "post 1: {}", replies[&1]);
    // `Streams/created` is ordinal 1.
    assert_eq!(replies[&100]["ok"]["messageCount"], POSTS + 1, "fetch: {}", replies[&100]);
    let newest = &replies[&101]["ok"]["messages"][0];
    assert_eq!(newest["content"], POSTS.to_string(), "history: {}", replies[&101]);
}
