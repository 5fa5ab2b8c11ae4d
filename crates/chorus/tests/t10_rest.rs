//! REST end to end against a started `chorus dev`: the wire contract of DESIGN.md §3.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Api, Server, enc};
use serde_json::json;

fn room(n: &str) -> String {
    format!("/v1/streams/alice/{}", enc(n))
}

/// Create, fetch, post, history, idempotent retry, update with its Streams/changed message.
#[tokio::test]
async fn streams_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));

    let (s, v) = alice
        .call("POST", "/v1/streams", Some(json!({"type": "Chat/room", "name": "Chat/room/1", "title": "One", "readLevel": 35, "writeLevel": 20})))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["publisherId"], "alice");
    assert_eq!(v["messageCount"], 1, "Streams/created is ordinal 1");
    assert!(v["insertedTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["closedTime"], json!(null));

    let (s, v) = alice
        .call("POST", "/v1/streams", Some(json!({"type": "Chat/room", "name": "Chat/room/1"})))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("already_exists")));

    let (s, v) = alice
        .call(
            "POST",
            &format!("{}/messages", room("Chat/room/1")),
            Some(json!({"type": "Chat/message", "content": "hi", "clientMsgId": "c1"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["ordinal"], 2);
    assert_eq!(v["streamName"], "Chat/room/1");
    assert_eq!(v["byUserId"], "alice");
    let (s, again) = alice
        .call(
            "POST",
            &format!("{}/messages", room("Chat/room/1")),
            Some(json!({"type": "Chat/message", "content": "hi", "clientMsgId": "c1"})),
        )
        .await;
    assert_eq!(s, 200, "a retry answers 200 with the first message");
    assert_eq!(again, v);

    let bob = Api::new(&server, server.token("bob", &[]));
    let (s, v) = bob
        .call(
            "POST",
            &format!("{}/messages", room("Chat/room/1")),
            Some(json!({"type": "Chat/message", "content": "yo"})),
        )
        .await;
    assert_eq!((s, v["ordinal"].as_u64()), (201, Some(3)), "{v}");

    let (s, v) =
        bob.call("GET", &format!("{}/messages?min=2&limit=10", room("Chat/room/1")), None).await;
    assert_eq!(s, 200);
    let ords: Vec<u64> =
        v["messages"].as_array().unwrap().iter().map(|m| m["ordinal"].as_u64().unwrap()).collect();
    assert_eq!(ords, vec![2, 3]);
    let (_, v) = bob
        .call("GET", &format!("{}/messages?order=desc&limit=2", room("Chat/room/1")), None)
        .await;
    let ords: Vec<u64> =
        v["messages"].as_array().unwrap().iter().map(|m| m["ordinal"].as_u64().unwrap()).collect();
    assert_eq!(ords, vec![3, 2]);

    let (s, v) = alice
        .call("PATCH", &room("Chat/room/1"), Some(json!({"title": "Renamed", "ifMessageCount": 3})))
        .await;
    assert_eq!((s, v["title"].as_str()), (200, Some("Renamed")), "{v}");
    let (_, h) = alice.call("GET", &format!("{}/messages?min=4", room("Chat/room/1")), None).await;
    assert_eq!(h["messages"][0]["type"], "Streams/changed");
    assert_eq!(h["messages"][0]["instructions"], json!({"changes": {"title": "Renamed"}}));
    let (s, v) = alice
        .call("PATCH", &room("Chat/room/1"), Some(json!({"title": "Stale", "ifMessageCount": 3})))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
    assert_eq!(v["stream"]["messageCount"], 4, "the conflict carries the current stream");

    // Fields by read level: bob reads at 35 (everything); carol sees nothing of a private one.
    let (_, v) = bob.call("GET", &room("Chat/room/1"), None).await;
    assert_eq!(v["messageCount"], 4);
    let (s, v) = alice
        .call("POST", "/v1/streams", Some(json!({"type": "Chat/room", "name": "secret"})))
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = bob.call("GET", &room("secret"), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")), "no existence leak");
    let (s, v) = bob
        .call(
            "POST",
            &format!("{}/messages", room("secret")),
            Some(json!({"type": "Chat/message", "content": "x"})),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));

    let (s, v) = bob
        .call("POST", "/v1/streams/batch-get", Some(json!({"streams": [{"publisherId": "alice", "name": "Chat/room/1"}, {"publisherId": "alice", "name": "secret"}]})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["streams"][0]["title"], "Renamed");
    assert_eq!(v["streams"][1], json!(null));

    // Generated names.
    let (s, v) = alice.call("POST", "/v1/streams", Some(json!({"type": "Chat/room"}))).await;
    assert_eq!(s, 201);
    assert!(v["name"].as_str().unwrap().starts_with("Chat/room/"));

    // Close: history stays, posting is a conflict.
    let (s, v) = alice.call("DELETE", &room("Chat/room/1"), None).await;
    assert_eq!(s, 200);
    assert!(v["closedTime"].is_string());
    let (s, v) = bob
        .call(
            "POST",
            &format!("{}/messages", room("Chat/room/1")),
            Some(json!({"type": "Chat/message", "content": "late"})),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
    let (_, v) = bob
        .call("GET", &format!("{}/messages?order=desc&limit=1", room("Chat/room/1")), None)
        .await;
    assert_eq!(v["messages"][0]["type"], "Streams/closed");
}

/// Join, subscribe, leave with exact counts; participant listing pages; access rows.
#[tokio::test]
async fn participants_and_access() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let (s, _) = alice
        .call(
            "POST",
            "/v1/streams",
            Some(json!({"type": "Chat/room", "name": "r", "readLevel": 30, "writeLevel": 10})),
        )
        .await;
    assert_eq!(s, 201);
    for u in ["u3", "u1", "u2", "u4"] {
        let api = Api::new(&server, server.token(u, &[]));
        let (s, v) = api.call("POST", &format!("{}/join", room("r")), None).await;
        assert_eq!((s, v["state"].as_str()), (200, Some("participating")), "{v}");
        let (s, _) = api.call("POST", &format!("{}/join", room("r")), Some(json!({}))).await;
        assert_eq!(s, 200, "a second join is idempotent");
    }
    let u4 = Api::new(&server, server.token("u4", &[]));
    let (s, v) = u4.call("POST", &format!("{}/subscribe", room("r")), None).await;
    assert_eq!((s, v["subscribed"].as_bool()), (200, Some(true)));
    let (s, v) = u4.call("POST", &format!("{}/leave", room("r")), None).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("left")));

    let (_, v) = alice.call("GET", &room("r"), None).await;
    assert_eq!(v["participantCount"], 3);
    let (s, p1) = alice.call("GET", &format!("{}/participants?limit=2", room("r")), None).await;
    assert_eq!(s, 200, "{p1}");
    let names: Vec<&str> = p1["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["userId"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["u1", "u2"]);
    let next = p1["next"].as_str().unwrap().to_owned();
    let (_, p2) =
        alice.call("GET", &format!("{}/participants?limit=2&after={next}", room("r")), None).await;
    assert_eq!(p2["participants"][0]["userId"], "u3");
    assert_eq!(p2["next"], json!(null));
    let (_, left) =
        alice.call("GET", &format!("{}/participants?state=left", room("r")), None).await;
    assert_eq!(left["participants"][0]["userId"], "u4");

    // Writers need post (20): u1 may not post until a row grants it.
    let u1 = Api::new(&server, server.token("u1", &[]));
    let (s, v) = u1
        .call(
            "POST",
            &format!("{}/messages", room("r")),
            Some(json!({"type": "Chat/message", "content": "x"})),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, v) = alice.call("PUT", &format!("{}/access", room("r")), Some(json!({"rows": [{"ofUserId": "u1", "writeLevel": 20}, {"ofRole": "mod", "readLevel": 40, "writeLevel": 40, "adminLevel": 30}]}))).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = u1
        .call(
            "POST",
            &format!("{}/messages", room("r")),
            Some(json!({"type": "Chat/message", "content": "x"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = alice.call("GET", &format!("{}/access", room("r")), None).await;
    assert_eq!((s, v["rows"].as_array().map(|r| r.len())), (200, Some(2)));
    let (s, _) = u1.call("GET", &format!("{}/access", room("r")), None).await;
    assert_eq!(s, 403, "reading rows needs admin manage");
    // A role from the token raises levels; a manager cannot grant manage.
    let m = Api::new(&server, server.token("m", &["mod"]));
    let (s, _) = m
        .call(
            "POST",
            &format!("{}/messages", room("r")),
            Some(json!({"type": "Chat/message", "content": "mod"})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = m
        .call(
            "PUT",
            &format!("{}/access", room("r")),
            Some(json!({"rows": [{"ofUserId": "x", "adminLevel": 30}]})),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));

    // The app acts as a user with X-Chorus-As-User, or as itself with max levels.
    let mut app = Api::new(&server, server.api_key.clone());
    let (s, v) = app
        .call(
            "POST",
            &format!("{}/messages", room("r")),
            Some(json!({"type": "App/notice", "content": "maintenance"})),
        )
        .await;
    assert_eq!((s, v["byUserId"].as_str()), (201, Some("")), "{v}");
    app.as_user = Some("u2".into());
    let (s, v) = app
        .call(
            "POST",
            &format!("{}/messages", room("r")),
            Some(json!({"type": "Chat/message", "content": "as u2"})),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")), "u2 has join only: {v}");
}

/// Templates: a `<type>/` stream of the app supplies fields and rows to new streams.
#[tokio::test]
async fn templates_supply_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let app = Api::new(&server, server.api_key.clone());
    let (s, v) = app.call("POST", "/v1/streams", Some(json!({"publisherId": "", "type": "Chat/room", "name": "Chat/room/", "title": "A room", "readLevel": 35, "writeLevel": 20}))).await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = app
        .call(
            "PUT",
            "/v1/streams/~/Chat%2Froom%2F/access",
            Some(json!({"rows": [{"ofRole": "staff", "adminLevel": 30}]})),
        )
        .await;
    assert_eq!(s, 200);
    let alice = Api::new(&server, server.token("alice", &[]));
    let (s, v) = alice
        .call("POST", "/v1/streams", Some(json!({"type": "Chat/room", "name": "Chat/room/9"})))
        .await;
    assert_eq!(s, 201);
    assert_eq!(
        (v["title"].as_str(), v["readLevel"].as_i64(), v["writeLevel"].as_i64()),
        (Some("A room"), Some(35), Some(20))
    );
    let (_, rows) = alice.call("GET", &format!("{}/access", room("Chat/room/9")), None).await;
    assert_eq!(rows["rows"][0]["ofRole"], "staff");
    // `<type>*` rules apply to every stream of the type, at calculation time.
    let (s, v) = alice
        .call(
            "PUT",
            &format!("/v1/streams/alice/{}/access", enc("Chat/room*")),
            Some(json!({"rows": [{"ofUserId": "zed", "readLevel": 0}]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let zed = Api::new(&server, server.token("zed", &[]));
    let (s, _) = zed.call("GET", &room("Chat/room/9"), None).await;
    assert_eq!(s, 404, "the user rule hides the stream from zed");
    let other = Api::new(&server, server.token("other", &[]));
    let (s, _) = other.call("GET", &room("Chat/room/9"), None).await;
    assert_eq!(s, 200);
}

/// Every kind of bad input gets its coded error, and the server keeps serving.
#[tokio::test]
async fn bad_inputs_get_coded_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let (s, _) =
        alice.call("POST", "/v1/streams", Some(json!({"type": "Chat/room", "name": "r"}))).await;
    assert_eq!(s, 201);
    let code = |v: &serde_json::Value| v["error"]["code"].as_str().map(str::to_owned);

    let (s, v) = alice.raw("POST", "/v1/streams", "{not json").await;
    assert_eq!((s, code(&v).as_deref()), (400, Some("invalid_argument")), "{v}");
    let (s, v) =
        alice.call("POST", "/v1/streams", Some(json!({"type": "Chat/room", "bogus": 1}))).await;
    assert_eq!((s, code(&v).as_deref()), (400, Some("invalid_argument")));
    assert!(v["error"]["message"].as_str().unwrap().contains("bogus"), "names the field: {v}");
    let (s, v) = alice.call("POST", "/v1/streams", Some(json!({"type": "bad//type"}))).await;
    assert_eq!((s, code(&v).as_deref()), (400, Some("invalid_argument")));
    let (s, v) = alice
        .call(
            "POST",
            "/v1/streams",
            Some(json!({"type": "Chat/room", "content": "x".repeat(1001)})),
        )
        .await;
    assert_eq!((s, code(&v).as_deref()), (413, Some("too_large")));
    let (s, v) = alice
        .call(
            "POST",
            &format!("{}/messages", room("r")),
            Some(json!({"type": "Chat/message", "content": "x".repeat(70_000)})),
        )
        .await;
    assert_eq!((s, code(&v).as_deref()), (413, Some("too_large")));
    let (s, v) = alice.call("GET", &format!("{}/messages?limit=abc", room("r")), None).await;
    assert_eq!((s, code(&v).as_deref()), (400, Some("invalid_argument")));

    let anon = Api::new(&server, "not-a-token".into());
    let (s, v) = anon.call("GET", &room("r"), None).await;
    assert_eq!((s, code(&v).as_deref()), (401, Some("unauthenticated")));
    let resp = reqwest::Client::new().get(server.url(&room("r"))).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401, "missing token");

    let bob = Api::new(&server, server.token("bob", &[]));
    let (s, v) = bob
        .call("POST", "/v1/streams", Some(json!({"type": "Chat/room", "publisherId": "alice"})))
        .await;
    assert_eq!(
        (s, code(&v).as_deref()),
        (403, Some("forbidden")),
        "only the app creates for others"
    );
    let (s, v) = alice.call("PATCH", &room("r"), Some(json!({"readLevel": 35}))).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = bob.call("PATCH", &room("r"), Some(json!({"title": "mine"}))).await;
    assert_eq!((s, code(&v).as_deref()), (403, Some("forbidden")), "wrong level");
    let (s, _) = alice.call("GET", "/healthz", None).await;
    assert_eq!(s, 200, "still serving");
}

/// A manager cannot make anyone `own` (not through rows, the stream's own adminLevel or
/// inheritAccess) nor remove an owner's row; users cannot forge `Streams/` messages.
#[tokio::test]
async fn managers_cannot_escalate_and_system_types_are_reserved() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice = Api::new(&server, server.token("alice", &[]));
    let (s, _) = alice
        .call(
            "POST",
            "/v1/streams",
            Some(json!({"type": "Chat/room", "name": "r", "readLevel": 35, "writeLevel": 20})),
        )
        .await;
    assert_eq!(s, 201);
    let rows = json!({"rows": [{"ofUserId": "mgr", "writeLevel": 30, "adminLevel": 30}, {"ofUserId": "owner2", "adminLevel": 40}]});
    let (s, v) = alice.call("PUT", &format!("{}/access", room("r")), Some(rows)).await;
    assert_eq!(s, 200, "{v}");
    let mgr = Api::new(&server, server.token("mgr", &[]));
    let code = |v: &serde_json::Value| v["error"]["code"].as_str().map(str::to_owned);
    let (s, v) = mgr.call("PATCH", &room("r"), Some(json!({"adminLevel": 40}))).await;
    assert_eq!((s, code(&v).as_deref()), (403, Some("forbidden")), "{v}");
    let (s, v) =
        mgr.call("PATCH", &room("r"), Some(json!({"inheritAccess": [["mgr", "mine"]]}))).await;
    assert_eq!((s, code(&v).as_deref()), (403, Some("forbidden")), "{v}");
    let (s, v) = mgr
        .call(
            "PUT",
            &format!("{}/access", room("r")),
            Some(json!({"rows": [{"ofUserId": "mgr", "writeLevel": 30, "adminLevel": 30}]})),
        )
        .await;
    assert_eq!((s, code(&v).as_deref()), (403, Some("forbidden")), "removing an owner row: {v}");
    let (s, v) =
        mgr.call("PATCH", &room("r"), Some(json!({"adminLevel": 20, "title": "ok"}))).await;
    assert_eq!(s, 200, "below manage is fine: {v}");

    let bob = Api::new(&server, server.token("bob", &[]));
    let (s, v) = bob
        .call(
            "POST",
            &format!("{}/messages", room("r")),
            Some(json!({"type": "Streams/closed", "content": "fake"})),
        )
        .await;
    assert_eq!((s, code(&v).as_deref()), (403, Some("forbidden")));

    // clientMsgId is per poster: bob's id never answers with alice's message.
    let path = format!("{}/messages", room("r"));
    let (s, a) = alice
        .call(
            "POST",
            &path,
            Some(json!({"type": "Chat/message", "content": "alice's", "clientMsgId": "same"})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, b) = bob
        .call(
            "POST",
            &path,
            Some(json!({"type": "Chat/message", "content": "bob's", "clientMsgId": "same"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_ne!(a["ordinal"], b["ordinal"]);

    // A retry of bob's acknowledged post still answers it after his access was cut (his
    // reply may have been lost before the change): first write, then read access. A new post
    // is refused.
    let retry = json!({"type": "Chat/message", "content": "bob's", "clientMsgId": "same"});
    let (s, v) = alice.call("PATCH", &room("r"), Some(json!({"writeLevel": 10}))).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = bob.call("POST", &path, Some(retry.clone())).await;
    assert_eq!((s, &v["ordinal"]), (200, &b["ordinal"]), "{v}");
    let (s, v) = bob
        .call(
            "POST",
            &path,
            Some(json!({"type": "Chat/message", "content": "new", "clientMsgId": "other"})),
        )
        .await;
    assert_eq!((s, code(&v).as_deref()), (403, Some("forbidden")), "{v}");
    let (s, v) = alice.call("PATCH", &room("r"), Some(json!({"readLevel": 0}))).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = bob.call("POST", &path, Some(retry)).await;
    assert_eq!((s, &v["ordinal"]), (200, &b["ordinal"]), "{v}");
    let (s, v) =
        alice.call("PATCH", &room("r"), Some(json!({"readLevel": 35, "writeLevel": 20}))).await;
    assert_eq!(s, 200, "{v}");

    // Query details: limit=0 is refused, empty values are absent, huge limits are clamped.
    let (s, _) = bob.call("GET", &format!("{path}?limit=0"), None).await;
    assert_eq!(s, 400);
    let (s, v) = bob.call("GET", &format!("{path}?min=&max=&limit=2"), None).await;
    assert_eq!((s, v["messages"].as_array().map(|m| m.len())), (200, Some(2)), "{v}");
    let (s, _) = bob.call("GET", &format!("{path}?limit=99999999999"), None).await;
    assert_eq!(s, 200);

    // Leaving a stream one never joined stores nothing, extra included.
    let (s, v) =
        bob.call("POST", &format!("{}/leave", room("r")), Some(json!({"extra": {"x": 1}}))).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("left")));
    let (_, left) =
        alice.call("GET", &format!("{}/participants?state=left", room("r")), None).await;
    assert_eq!(left["participants"], json!([]));
}

/// Browser pages of other origins may call the API (CORS, no credentials: tokens are bearer
/// headers); a 401 names the Bearer scheme; the WebSocket upgrade takes only `?token=`.
#[tokio::test]
async fn cors_www_authenticate_and_a_strict_upgrade_query() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let http = reqwest::Client::new();
    let preflight = http
        .request(reqwest::Method::OPTIONS, server.url("/v1/streams"))
        .header("Origin", "https://app.example.com")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization,content-type,x-chorus-as-user")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    let methods = h["access-control-allow-methods"].to_str().unwrap().to_owned();
    assert!(methods.contains("POST") && methods.contains("PATCH"), "{methods}");
    let allowed = h["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("x-chorus-as-user"), "{allowed}");

    let unauthenticated = http
        .get(server.url("/v1/streams/alice/x"))
        .header("Origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    assert_eq!(unauthenticated.headers()["www-authenticate"], "Bearer");
    assert_eq!(unauthenticated.headers()["access-control-allow-origin"], "*");

    let token = server.token("alice", &[]);
    let upgrade = |query: String| {
        let http = http.clone();
        let url = server.url(&format!("/v1/ws?{query}"));
        async move {
            http.get(url)
                .header("Connection", "upgrade")
                .header("Upgrade", "websocket")
                .header("Sec-WebSocket-Version", "13")
                .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
                .send()
                .await
                .unwrap()
        }
    };
    let stray = upgrade(format!("token={token}&bogus=1")).await;
    assert_eq!(stray.status(), 400);
    let body: serde_json::Value = stray.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_argument", "{body}");
    assert_eq!(upgrade(format!("token={token}")).await.status(), 101);
    assert_eq!(upgrade("token=garbage&bogus=1".into()).await.status(), 401);
    // Two tokens: which one is meant is unknowable, even when both are good.
    assert_eq!(upgrade(format!("token={token}&token={token}")).await.status(), 401);
}
