//! Wire-contract regressions against a started `chorus dev`: claims of DESIGN.md §3 that an
//! independent client suite checks and the server once got wrong. Each test names the claim.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Api, Server, enc};
use serde_json::{Value, json};

fn stream_path(publisher: &str, name: &str) -> String {
    format!("/v1/streams/{publisher}/{}", enc(name))
}

fn code(v: &Value) -> Option<&str> {
    v["error"]["code"].as_str()
}

/// "A manager may grant admin levels below manage only": `PUT …/access` replaces the whole
/// set, so a manager (admin 30 from its own user row) must be able to send a set that keeps
/// the existing manager and owner rows unchanged and adds a row below manage. Adding,
/// raising or dropping a manage-or-above row still needs `own`.
#[tokio::test]
async fn manager_grants_below_manage_while_keeping_manager_rows() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let room = stream_path("alice", "Chat/room/managed");
    let create = json!({"type": "Chat/room", "name": "Chat/room/managed", "readLevel": 35});
    let (s, v) = alice.call("POST", "/v1/streams", Some(create)).await;
    assert_eq!(s, 201, "{v}");
    let mgr_row = json!({"ofUserId": "mgr", "readLevel": 40, "writeLevel": 40, "adminLevel": 30});
    let owner_row = json!({"ofUserId": "owner2", "adminLevel": 40});
    let rows = json!({"rows": [mgr_row, owner_row]});
    let (s, v) = alice.call("PUT", &format!("{room}/access"), Some(rows)).await;
    assert_eq!(s, 200, "{v}");

    let mgr = Api::new(&server, server.token("mgr", &[]));
    let grant = |admin: i32| json!({"rows": [mgr_row, owner_row, {"ofUserId": "carol", "writeLevel": 20, "adminLevel": admin}]});
    let (s, v) = mgr.call("PUT", &format!("{room}/access"), Some(grant(20))).await;
    assert_eq!(s, 200, "a manager grants admin 20 and keeps the existing rows: {v}");
    assert_eq!(v["rows"].as_array().map(Vec::len), Some(3), "{v}");
    let (s, v) = mgr.call("GET", &format!("{room}/access"), None).await;
    assert_eq!((s, v["rows"][2]["adminLevel"].as_i64()), (200, Some(20)), "{v}");

    let (s, v) = mgr.call("PUT", &format!("{room}/access"), Some(grant(30))).await;
    assert_eq!((s, code(&v)), (403, Some("forbidden")), "granting manage: {v}");
    let raised = json!({"rows": [{"ofUserId": "mgr", "adminLevel": 40}, owner_row]});
    let (s, v) = mgr.call("PUT", &format!("{room}/access"), Some(raised)).await;
    assert_eq!((s, code(&v)), (403, Some("forbidden")), "raising itself to own: {v}");
    let dropped = json!({"rows": [mgr_row]});
    let (s, v) = mgr.call("PUT", &format!("{room}/access"), Some(dropped)).await;
    assert_eq!((s, code(&v)), (403, Some("forbidden")), "removing an owner row: {v}");
    let locks_out =
        json!({"rows": [mgr_row, {"ofUserId": "owner2", "readLevel": 0, "adminLevel": 40}]});
    let (s, v) = mgr.call("PUT", &format!("{room}/access"), Some(locks_out)).await;
    assert_eq!((s, code(&v)), (403, Some("forbidden")), "changing an owner's row: {v}");
    let twice = json!({"rows": [mgr_row, owner_row, {"ofUserId": "owner2", "adminLevel": 0}]});
    let (s, v) = mgr.call("PUT", &format!("{room}/access"), Some(twice)).await;
    assert_eq!((s, code(&v)), (400, Some("invalid_argument")), "a subject twice: {v}");

    // The publisher (own) may grant anything.
    let any = json!({"rows": [{"ofUserId": "carol", "adminLevel": 40}]});
    let (s, v) = alice.call("PUT", &format!("{room}/access"), Some(any)).await;
    assert_eq!(s, 200, "{v}");
}

/// "`publisherId` defaults to the caller": the app's own publisher is `""` (its posts carry
/// `byUserId: ""`), so an app create without `publisherId` makes a `""` stream, fetched as `~`.
#[tokio::test]
async fn app_create_without_publisher_id_publishes_as_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let app = Api::new(&server, server.api_key.clone());
    let create = json!({"type": "Chat/room", "name": "Chat/room/lobby", "readLevel": 35});
    let (s, v) = app.call("POST", "/v1/streams", Some(create)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["publisherId"], "");
    let (s, v) = app.call("GET", &stream_path("~", "Chat/room/lobby"), None).await;
    assert_eq!((s, v["name"].as_str()), (200, Some("Chat/room/lobby")), "{v}");

    // A user's default stays the user, and only the app may name another publisher.
    let alice = Api::new(&server, server.token("alice", &[]));
    let (s, v) = alice.call("POST", "/v1/streams", Some(json!({"type": "Chat/room"}))).await;
    assert_eq!((s, v["publisherId"].as_str()), (201, Some("alice")), "{v}");
    let (s, v) = alice
        .call("POST", "/v1/streams", Some(json!({"type": "Chat/room", "publisherId": ""})))
        .await;
    assert_eq!((s, code(&v)), (403, Some("forbidden")), "{v}");
}

/// "Strict requests": input a route does not take is refused, not ignored — a query parameter
/// on a route without any, a body on `GET`/`DELETE`, a body that is an array (serde would read
/// it field by field). An RFC 6455 version other than 13 is 426 naming the version spoken.
#[tokio::test]
async fn stray_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let room = stream_path("alice", "Chat/room/strict");
    let create = json!({"type": "Chat/room", "name": "Chat/room/strict", "readLevel": 40});
    let (s, v) = alice.call("POST", "/v1/streams", Some(create)).await;
    assert_eq!(s, 201, "{v}");

    let (s, v) = alice.call("GET", &format!("{room}?foo=1"), None).await;
    assert_eq!((s, code(&v)), (400, Some("invalid_argument")), "query on fetch: {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("foo"), "{v}");
    let (s, v) = alice.call("GET", &format!("{room}/messages?limit=1"), None).await;
    assert_eq!(s, 200, "history takes a query: {v}");
    let (s, v) = alice.raw("DELETE", &room, r#"{"x":1}"#).await;
    assert_eq!((s, code(&v)), (400, Some("invalid_argument")), "body on DELETE: {v}");
    let (s, v) = alice.raw("POST", "/v1/streams", r#"["alice","Chat/room/arr","Chat/room"]"#).await;
    assert_eq!((s, code(&v)), (400, Some("invalid_argument")), "array body: {v}");
    let post = r#"["Chat/message","by position",null,null]"#;
    let (s, v) = alice.raw("POST", &format!("{room}/messages"), post).await;
    assert_eq!((s, code(&v)), (400, Some("invalid_argument")), "array post: {v}");
    let (s, v) = alice.call("GET", &room, None).await;
    assert_eq!((s, v["messageCount"].as_u64()), (200, Some(1)), "nothing was posted: {v}");

    let bad_rule = format!("{}/access", stream_path("alice", "bad type*"));
    let (s, v) = alice.call("PUT", &bad_rule, Some(json!({"rows": []}))).await;
    assert_eq!((s, code(&v)), (400, Some("invalid_argument")), "rule of an invalid type: {v}");
    let good_rule = format!("{}/access", stream_path("alice", "Chat/room*"));
    let (s, v) = alice.call("PUT", &good_rule, Some(json!({"rows": []}))).await;
    assert_eq!(s, 200, "{v}");

    // WebSocket `create` with the stream named as every other op names it.
    let token = server.token("alice", &[]);
    let mut ws = common::ws_connect(&server, &token).await;
    let frame = json!({"id": 1, "op": "create", "type": "Chat/room",
        "stream": {"publisherId": "alice", "name": "Chat/room/ws-made"}});
    common::ws_send(&mut ws, frame).await;
    let reply = common::ws_reply(&mut ws, 1).await;
    assert_eq!(reply["ok"]["name"], "Chat/room/ws-made", "{reply}");

    let wrong_version = reqwest::Client::new()
        .get(server.url("/v1/ws"))
        .bearer_auth(&token)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_version.status().as_u16(), 426);
    assert_eq!(wrong_version.headers()["sec-websocket-version"], "13");
}

/// "Changing `readLevel`, `writeLevel`, `adminLevel` or `inheritAccess` in a PATCH needs admin
/// manage": a field sent back unchanged is no change, so an editor may PATCH the whole stream
/// object with a new title. Moving the stream's `adminLevel` from manage down takes manage from
/// everyone, which a manager may not do by PATCH any more than by `PUT …/access`.
#[tokio::test]
async fn patch_counts_only_real_level_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let room = stream_path("alice", "Chat/room/patched");
    let create = json!({"type": "Chat/room", "name": "Chat/room/patched", "readLevel": 40,
        "writeLevel": 30, "adminLevel": 30});
    let (s, v) = alice.call("POST", "/v1/streams", Some(create)).await;
    assert_eq!(s, 201, "{v}");
    let rows = json!({"rows": [{"ofUserId": "ed", "writeLevel": 30, "adminLevel": 20}]});
    let (s, v) = alice.call("PUT", &format!("{room}/access"), Some(rows)).await;
    assert_eq!(s, 200, "{v}");

    let ed = Api::new(&server, server.token("ed", &[]));
    let same = json!({"title": "t1", "readLevel": 40, "inheritAccess": []});
    let (s, v) = ed.call("PATCH", &room, Some(same)).await;
    assert_eq!(s, 200, "levels sent back unchanged: {v}");
    let (s, v) = ed.call("PATCH", &room, Some(json!({"readLevel": 35}))).await;
    assert_eq!((s, code(&v)), (403, Some("forbidden")), "a real change needs manage: {v}");

    // Everyone has manage (the stream's adminLevel is 30); lowering it is taking manage away.
    let mgr = Api::new(&server, server.token("mgr", &[]));
    let (s, v) = mgr.call("PATCH", &room, Some(json!({"adminLevel": 25}))).await;
    assert_eq!((s, code(&v)), (403, Some("forbidden")), "{v}");
    let (s, v) = mgr.call("PATCH", &room, Some(json!({"adminLevel": 30, "title": "t2"}))).await;
    assert_eq!(s, 200, "adminLevel unchanged: {v}");
    let (s, v) = alice.call("PATCH", &room, Some(json!({"adminLevel": 25}))).await;
    assert_eq!(s, 200, "the owner may: {v}");
}

/// Three claims an SDK leans on: "an SDK may send the whole stream back with a new title"; "a
/// retry of a post with the same `clientMsgId` by the same poster answers the first message
/// (200) whatever the body says"; a participant's `extra` stays within its limit merged.
#[tokio::test]
async fn whole_stream_patch_retries_with_any_body_and_merged_extra() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let room = stream_path("alice", "Chat/room/sdk");
    let create =
        json!({"type": "Chat/room", "name": "Chat/room/sdk", "readLevel": 35, "writeLevel": 20});
    let (s, v) = alice.call("POST", "/v1/streams", Some(create)).await;
    assert_eq!(s, 201, "{v}");

    // The fetched object, title changed, sent back whole (counters may be stale: ignored).
    let (_, mut whole) = alice.call("GET", &room, None).await;
    whole["title"] = json!("Renamed");
    whole["messageCount"] = json!(999);
    let (s, v) = alice.call("PATCH", &room, Some(whole.clone())).await;
    assert_eq!((s, v["title"].as_str()), (200, Some("Renamed")), "{v}");
    assert_eq!(v["messageCount"], 2, "the Streams/changed message counts, not the body: {v}");
    whole["name"] = json!("Chat/room/other");
    let (s, v) = alice.call("PATCH", &room, Some(whole)).await;
    assert_eq!((s, code(&v)), (400, Some("invalid_argument")), "another stream's name: {v}");

    // A retry whose body is now refused (too large, a server type) answers the first message.
    let first = json!({"type": "Chat/message", "content": "hi", "clientMsgId": "m-1"});
    let (s, v) = alice.call("POST", &format!("{room}/messages"), Some(first)).await;
    assert_eq!(s, 201, "{v}");
    let ordinal = v["ordinal"].clone();
    let big = json!({"type": "Chat/message", "clientMsgId": "m-1",
        "instructions": {"a": "x".repeat(70_000)}});
    let server_type = json!({"type": "Streams/x", "clientMsgId": "m-1"});
    for retry in [big, server_type] {
        let (s, v) = alice.call("POST", &format!("{room}/messages"), Some(retry)).await;
        assert_eq!((s, &v["ordinal"], v["content"].as_str()), (200, &ordinal, Some("hi")), "{v}");
    }
    let fresh = json!({"type": "Streams/x", "clientMsgId": "m-2"});
    let (s, v) = alice.call("POST", &format!("{room}/messages"), Some(fresh)).await;
    assert_eq!((s, code(&v)), (403, Some("forbidden")), "no stored message: refused: {v}");

    // Two joins whose `extra` fits alone but not merged: the second is refused, nothing changes.
    let bob = Api::new(&server, server.token("bob", &[]));
    let join = |k: &str| json!({"extra": {k: "x".repeat(600)}});
    let (s, v) = bob.call("POST", &format!("{room}/join"), Some(join("a"))).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = bob.call("POST", &format!("{room}/join"), Some(join("b"))).await;
    assert_eq!((s, code(&v)), (413, Some("too_large")), "{v}");
    let (s, v) = alice.call("GET", &format!("{room}/participants"), None).await;
    let extra = &v["participants"][0]["extra"];
    assert_eq!((s, extra.as_object().map(|m| m.len())), (200, Some(1)), "{v}");
}

/// "joining/leaving still ok" (Qbix): a participant whose read level was taken below `see`
/// (a ban) can still leave, so they stop being counted; anyone else who cannot see the stream
/// gets `not_found`, as for every other op.
#[tokio::test]
async fn a_banned_participant_can_still_leave() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let room = stream_path("alice", "Chat/room/ban");
    let create =
        json!({"type": "Chat/room", "name": "Chat/room/ban", "readLevel": 35, "writeLevel": 20});
    let (s, v) = alice.call("POST", "/v1/streams", Some(create)).await;
    assert_eq!(s, 201, "{v}");
    let bob = Api::new(&server, server.token("bob", &[]));
    let (s, v) = bob.call("POST", &format!("{room}/subscribe"), None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = alice.call("PATCH", &room, Some(json!({"readLevel": 0, "writeLevel": 0}))).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = bob.call("GET", &room, None).await;
    assert_eq!(s, 404, "{v}");

    let carol = Api::new(&server, server.token("carol", &[]));
    let (s, v) = carol.call("POST", &format!("{room}/leave"), None).await;
    assert_eq!((s, code(&v)), (404, Some("not_found")), "never a participant: {v}");
    let (s, v) = bob.call("POST", &format!("{room}/leave"), None).await;
    assert_eq!(
        (s, v["state"].as_str(), &v["subscribed"]),
        (200, Some("left"), &json!(false)),
        "{v}"
    );
    let (s, v) = alice.call("GET", &room, None).await;
    assert_eq!((s, &v["participantCount"]), (200, &json!(0)), "{v}");
    let (s, v) = bob.call("POST", &format!("{room}/leave"), None).await;
    assert_eq!((s, code(&v)), (404, Some("not_found")), "nothing left to leave: {v}");
}

/// A stream named `.` or `..` could be created but never reached by clients that resolve
/// path segments (curl, browsers): refused at create.
#[tokio::test]
async fn dot_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    for name in [".", ".."] {
        let create = json!({"type": "Chat/room", "name": name});
        let (s, v) = alice.call("POST", "/v1/streams", Some(create)).await;
        assert_eq!((s, code(&v)), (400, Some("invalid_argument")), "{name}: {v}");
    }
    let (s, v) = alice.call("GET", "/v1/streams//x", None).await;
    assert_eq!((s, code(&v)), (400, Some("invalid_argument")), "empty publisher: {v}");
}

/// A client that never finishes its request headers (slowloris), opens a connection and sends
/// nothing, or never finishes its body, is closed after 20 s instead of holding the
/// connection forever (the body one with a 400); other clients are served meanwhile.
#[tokio::test]
async fn slow_header_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut partial = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    partial.write_all(b"GET /healthz HTTP/1.1\r\nHost: chorus\r\n").await.unwrap();
    let mut silent = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    // Headers complete, then one byte of a 100-byte body and nothing more.
    let mut slow_body = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let head = format!(
        "POST /v1/streams HTTP/1.1\r\nHost: chorus\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        server.api_key
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();
    let app = Api::new(&server, server.api_key.clone());
    let (s, v) = app.call("GET", "/v1/streams/~/Chat%2Froom%2Fnone", None).await;
    assert_eq!(s, 404, "another client is served meanwhile: {v}");
    let started = std::time::Instant::now();
    let mut answers = Vec::new();
    for conn in [&mut partial, &mut silent, &mut slow_body] {
        let mut buf = [0u8; 1024];
        let mut answer = Vec::new();
        // hyper answers 408 or just closes: either way the read ends, with EOF after it.
        let ended = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the connection is still open after 60 s");
        answers.push(String::from_utf8_lossy(&answer).into_owned());
    }
    assert!(started.elapsed() >= std::time::Duration::from_secs(10), "closed too early");
    // The body that never came is answered, with the error shape, and the connection closed.
    assert!(answers[2].starts_with("HTTP/1.1 400"), "{}", answers[2]);
    assert!(answers[2].contains("invalid_argument"), "{}", answers[2]);
}

/// A client that asks before uploading (`Expect: 100-continue`) a body over the limit is told
/// 413 at once, not `100 Continue` first.
#[tokio::test]
async fn an_oversized_body_announced_with_expect_gets_413_without_continue() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut conn = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let head = format!(
        "POST /v1/streams HTTP/1.1\r\nHost: chorus\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 2000000\r\n\
         Expect: 100-continue\r\n\r\n",
        server.api_key
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while !String::from_utf8_lossy(&answer).contains("too_large") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 30 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

/// `inheritAccess` names streams: an access rule, the same parent twice, or the stream itself
/// is a client's mistake and refused.
#[tokio::test]
async fn inherit_access_names_other_streams_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let parent = json!({"publisherId": "alice", "name": "Chat/room/p"});
    let create = |name: &str, inherit: Value| json!({"type": "Chat/room", "name": name, "inheritAccess": inherit});
    let bad = [
        ("Chat/room/a", json!([parent, parent])),
        ("Chat/room/b", json!([{"publisherId": "alice", "name": "Chat/room*"}])),
        ("Chat/room/c", json!([{"publisherId": "alice", "name": "Chat/room/c"}])),
    ];
    for (name, inherit) in bad {
        let (s, v) = alice.call("POST", "/v1/streams", Some(create(name, inherit))).await;
        assert_eq!((s, code(&v)), (400, Some("invalid_argument")), "{name}: {v}");
    }
    let (s, v) =
        alice.call("POST", "/v1/streams", Some(create("Chat/room/d", json!([parent])))).await;
    assert_eq!(s, 201, "{v}");
    let itself = json!({"inheritAccess": [{"publisherId": "alice", "name": "Chat/room/d"}]});
    let (s, v) = alice.call("PATCH", &stream_path("alice", "Chat/room/d"), Some(itself)).await;
    assert_eq!((s, code(&v)), (400, Some("invalid_argument")), "{v}");
}

/// One bearer credential per request: two `Authorization` headers are refused (401) whatever
/// their order, as are two `X-Chorus-As-User` headers (400) — a proxy in front may have read
/// the other copy, so picking one would run the request as someone else.
#[tokio::test]
async fn repeated_credential_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let create = json!({"type": "Chat/room", "name": "Chat/room/creds"});
    let (s, v) = alice.call("POST", "/v1/streams", Some(create)).await;
    assert_eq!(s, 201, "{v}");
    let url = server.url(&stream_path("alice", "Chat/room/creds"));
    let user = format!("Bearer {}", server.token("mallory", &[]));
    let app = format!("Bearer {}", server.api_key);
    let client = reqwest::Client::new();
    for (first, second) in [(&user, &app), (&app, &user), (&app, &app)] {
        let resp = client
            .get(&url)
            .header("Authorization", first.as_str())
            .header("Authorization", second.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(code(&v), Some("unauthenticated"), "{v}");
    }
    let resp = client
        .get(&url)
        .header("Authorization", app.as_str())
        .header("X-Chorus-As-User", "alice")
        .header("X-Chorus-As-User", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(code(&v), Some("invalid_argument"), "{v}");
    // One of each still works.
    let resp =
        client.get(&url).header("Authorization", app).header("X-Chorus-As-User", "alice").send();
    assert_eq!(resp.await.unwrap().status(), 200);
}

/// "A body is a JSON object: an array (which serde would read field by field) is 400" holds
/// for the objects inside a body too: a stream reference or an access row written as an array
/// is refused, not read by field position (only `inheritAccess` entries take the documented
/// tuple forms).
#[tokio::test]
async fn nested_objects_are_not_read_from_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let create = json!({"type": "Chat/room", "name": "Chat/room/tuples"});
    let (s, v) = alice.call("POST", "/v1/streams", Some(create)).await;
    assert_eq!(s, 201, "{v}");
    let access = format!("{}/access", stream_path("alice", "Chat/room/tuples"));
    let refused = [
        (
            "POST",
            "/v1/streams/batch-get".to_owned(),
            json!({"streams": [["alice", "Chat/room/tuples"]]}),
        ),
        ("PUT", access.clone(), json!({"rows": [["bob", null, 10, 20, 0]]})),
        ("PUT", access.clone(), json!({"rows": [["bob"]]})),
    ];
    for (method, path, body) in refused {
        let (s, v) = alice.call(method, &path, Some(body)).await;
        assert_eq!((s, code(&v)), (400, Some("invalid_argument")), "{method} {path}: {v}");
    }
    let (s, v) = alice.call("GET", &access, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["rows"], json!([]), "nothing was stored: {v}");
    let batch = json!({"streams": [{"publisherId": "alice", "name": "Chat/room/tuples"}]});
    let (s, v) = alice.call("POST", "/v1/streams/batch-get", Some(batch)).await;
    assert_eq!(s, 200, "{v}");
}
