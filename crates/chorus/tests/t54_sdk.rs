//! The client SDK (`chorus-client`) against a real `chorus dev`: the offline queue across a
//! server outage and a client kill, catching up after a disconnect, permanent refusals,
//! conflict hand-off and the local cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_client::{
    BackoffPolicy, Client, ClientBuilder, ErrorCode, LoadState, NewMessage, Origin, PostHandle,
    Resolution, StreamId, StreamUpdate, SyncState, UpdateOutcome,
};
use common::{Api, Proxy, Server, enc, free_port};
use serde_json::{Value, json};

/// Short delays so reconnects happen within a test; the defaults are 1 s to 8 s.
const TEST_BACKOFF: BackoffPolicy =
    BackoffPolicy { initial: Duration::from_millis(50), max: Duration::from_millis(200) };

/// Every wait in these tests ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(60);

fn client_for(url: &str, token: &str) -> ClientBuilder {
    Client::builder(url, token).backoff(TEST_BACKOFF)
}

async fn create_room(server: &Server, token: &str, name: &str) {
    let api = Api::new(server, token.to_owned());
    let body = json!({"type": "Chat/room", "name": name, "readLevel": 35, "writeLevel": 20});
    let (status, reply) = api.call("POST", "/v1/streams", Some(body)).await;
    assert_eq!(status, 201, "{reply}");
}

/// The stream's full history over HTTP, oldest first.
async fn history(server: &Server, token: &str, publisher: &str, name: &str) -> Vec<Value> {
    let api = Api::new(server, token.to_owned());
    let path = format!("/v1/streams/{publisher}/{}/messages?limit=1000", enc(name));
    let (status, body) = api.call("GET", &path, None).await;
    assert_eq!(status, 200, "{body}");
    body["messages"].as_array().unwrap().clone()
}

fn contents_of_type(messages: &[Value], message_type: &str) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["type"] == message_type)
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

async fn settle(handle: &mut PostHandle) -> chorus_client::LocalMessage {
    tokio::time::timeout(DEADLINE, handle.settled()).await.expect("post settled in time")
}

/// Asserts the posts synced at strictly increasing ordinals, in the order they were posted.
async fn assert_synced_in_order(handles: &mut [PostHandle]) {
    let mut previous = 0;
    for handle in handles.iter_mut() {
        let settled = settle(handle).await;
        let ordinal = settled.ordinal().unwrap_or_else(|| panic!("not synced: {settled:?}"));
        assert!(ordinal > previous, "posted order is ordinal order");
        previous = ordinal;
    }
}

/// Opens a client on a store file that a dropped client may still be closing (its tasks end
/// asynchronously); retries until the file is free.
async fn reopen(builder: impl Fn() -> ClientBuilder) -> Client {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match builder().build() {
            Ok(client) => return client,
            Err(error) => {
                assert!(tokio::time::Instant::now() < deadline, "store not released: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Posts made while the server is down are queued, then delivered exactly once, in order,
/// once it starts.
#[tokio::test]
async fn posts_made_while_the_server_is_down_are_delivered_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let server = Server::start_on(&data, port);
    let token = server.token("alice", &[]);
    create_room(&server, &token, "Chat/room/1").await;
    server.kill();

    let client = client_for(&format!("http://127.0.0.1:{port}"), &token)
        .store_path(dir.path().join("client.redb"))
        .build()
        .unwrap();
    let room = StreamId::new("alice", "Chat/room/1");
    let mut handles = Vec::new();
    for i in 0..20 {
        let handle =
            client.post(&room, NewMessage::new("Chat/message", format!("m{i}"))).await.unwrap();
        assert_eq!(handle.get().state, SyncState::Syncing, "answered at once, offline");
        handles.push(handle);
    }
    assert!(!client.connection().borrow().connected);

    let server = Server::start_on(&data, port);
    assert_synced_in_order(&mut handles).await;
    let messages = history(&server, &token, "alice", "Chat/room/1").await;
    let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(contents_of_type(&messages, "Chat/message"), expected, "once each, in order");
    assert!(client.queued_posts().is_empty());
}

/// The child half of [`a_killed_client_delivers_its_queue_once_after_restart`]: queues posts
/// against a server that is down, says so, and waits to be killed. A no-op unless the
/// parent test runs it.
#[tokio::test]
async fn child_process_queues_posts_and_waits() {
    let (Ok(store), Ok(url), Ok(token)) = (
        std::env::var("SDK_CHILD_STORE"),
        std::env::var("SDK_CHILD_URL"),
        std::env::var("SDK_CHILD_TOKEN"),
    ) else {
        return;
    };
    let client = client_for(&url, &token).store_path(store).build().unwrap();
    let room = StreamId::new("alice", "Chat/room/1");
    for i in 0..10 {
        client.post(&room, NewMessage::new("Chat/message", format!("q{i}"))).await.unwrap();
    }
    println!("QUEUED");
    std::future::pending::<()>().await;
}

/// A client process killed (SIGKILL) with posts in its queue delivers them exactly once, in
/// order, when restarted on the same store.
#[tokio::test]
async fn a_killed_client_delivers_its_queue_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = dir.path().join("client.redb");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let server = Server::start_on(&data, port);
    let token = server.token("alice", &[]);
    create_room(&server, &token, "Chat/room/1").await;
    server.kill();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_process_queues_posts_and_waits", "--exact", "--nocapture"])
        .env("SDK_CHILD_STORE", &store)
        .env("SDK_CHILD_URL", &url)
        .env("SDK_CHILD_TOKEN", &token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("child exited before queueing").unwrap();
        if line.trim() == "QUEUED" {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let server = Server::start_on(&data, port);
    let client = client_for(&url, &token).store_path(&store).build().unwrap();
    let mut handles = client.queued_posts();
    assert_eq!(handles.len(), 10, "the queue survived the kill");
    assert_synced_in_order(&mut handles).await;
    let messages = history(&server, &token, "alice", "Chat/room/1").await;
    let expected: Vec<String> = (0..10).map(|i| format!("q{i}")).collect();
    assert_eq!(contents_of_type(&messages, "Chat/message"), expected);
}

/// A listener cut off while 500 messages are posted ends with all of them, in order, each
/// once: the live collection and a raw feed alike.
#[tokio::test]
async fn a_listener_disconnected_during_500_posts_catches_up_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let token = server.token("alice", &[]);
    create_room(&server, &token, "Chat/room/1").await;
    let proxy = Proxy::start(&server.addr).await;
    let client = client_for(&proxy.url(), &server.token("bob", &[])).build().unwrap();
    let room = StreamId::new("alice", "Chat/room/1");
    let collection = client.messages(&room);
    let mut feed = client.listen(&room, Some(0));
    let synced =
        tokio::time::timeout(DEADLINE, collection.wait_for(|s| s.state == LoadState::Synced))
            .await
            .unwrap();
    assert_eq!(synced.value.messages.len(), 1, "Streams/created");
    assert_eq!(feed.next().await.unwrap().unwrap().ordinal, 1);

    proxy.set_up(false);
    let mut connection = client.connection();
    tokio::time::timeout(DEADLINE, connection.wait_for(|c| !c.connected)).await.unwrap().unwrap();
    let mut writers = Vec::new();
    for w in 0..5 {
        let api = Api::new(&server, token.clone());
        writers.push(tokio::spawn(async move {
            let path = format!("/v1/streams/alice/{}/messages", enc("Chat/room/1"));
            for i in 0..100 {
                let body = json!({"type": "Chat/message", "content": format!("w{w}-{i}")});
                let (status, reply) = api.call("POST", &path, Some(body)).await;
                assert_eq!(status, 201, "{reply}");
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    proxy.set_up(true);

    let all = tokio::time::timeout(
        DEADLINE,
        collection.wait_for(|s| s.value.messages.last().is_some_and(|m| m.ordinal == 501)),
    )
    .await
    .unwrap();
    let ordinals: Vec<u64> = all.value.messages.iter().map(|m| m.ordinal).collect();
    assert_eq!(ordinals, (1..=501).collect::<Vec<u64>>(), "in order, no gap, no duplicate");
    for expected in 2..=501 {
        let message = tokio::time::timeout(DEADLINE, feed.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(message.ordinal, expected);
    }

    // A fresh collection starts from the newest page and pages back on demand.
    let reader = client_for(&server.url(""), &token).page_size(100).build().unwrap();
    let paged = reader.messages(&room);
    let first = tokio::time::timeout(DEADLINE, paged.wait_for(|s| s.state == LoadState::Synced))
        .await
        .unwrap();
    let ordinals: Vec<u64> = first.value.messages.iter().map(|m| m.ordinal).collect();
    assert_eq!(ordinals, (402..=501).collect::<Vec<u64>>());
    assert!(first.value.has_older);
    assert_eq!(paged.next_page().await.unwrap(), 100);
    let two_pages = paged.get().value.messages;
    assert_eq!((two_pages.len(), two_pages[0].ordinal), (200, 302));
}

/// The token provider is asked before every connection attempt: after a refused upgrade
/// (401) the client asks again and connects with the fresh token.
#[tokio::test]
async fn the_token_provider_is_asked_again_after_a_refused_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let token = server.token("alice", &[]);
    create_room(&server, &token, "Chat/room/1").await;
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let fresh = token.clone();
    let client = client_for(&server.url(""), "unused")
        .token_provider(move || {
            let call = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // The first token has "expired".
            let token = if call == 0 { "expired".to_owned() } else { fresh.clone() };
            async move { Ok::<_, chorus_client::TokenError>(token) }
        })
        .build()
        .unwrap();
    let room = StreamId::new("alice", "Chat/room/1");
    let mut post = client.post(&room, NewMessage::new("Chat/message", "hi")).await.unwrap();
    assert_eq!(settle(&mut post).await.ordinal(), Some(2));
    assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

/// A post the server refuses for good ends in `error` with the code, is sent once (no retry
/// loop, not even after a restart), and does not hold up the posts behind it.
#[tokio::test]
async fn a_permanent_refusal_ends_in_error_without_retries() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let token = server.token("alice", &[]);
    create_room(&server, &token, "Chat/room/1").await;
    let store = dir.path().join("client.redb");
    let url = server.url("");
    let build = || client_for(&url, &token).store_path(&store);
    let client = build().build().unwrap();
    let room = StreamId::new("alice", "Chat/room/1");
    let huge = "x".repeat(70_000);
    let mut too_large = client.post(&room, NewMessage::new("Chat/message", huge)).await.unwrap();
    let mut forbidden = client.post(&room, NewMessage::new("Streams/changed", "no")).await.unwrap();
    let mut fine = client.post(&room, NewMessage::new("Chat/message", "fine")).await.unwrap();

    let refused = settle(&mut too_large).await;
    assert!(
        matches!(&refused.state, SyncState::Error(e) if e.code == ErrorCode::TooLarge),
        "{refused:?}"
    );
    let refused = settle(&mut forbidden).await;
    assert!(
        matches!(&refused.state, SyncState::Error(e) if e.code == ErrorCode::Forbidden),
        "{refused:?}"
    );
    assert_eq!(settle(&mut fine).await.ordinal(), Some(2), "nothing refused was stored");

    // The refused posts stay visible (to show or discard), across a restart, unsent.
    drop(client);
    let client = reopen(build).await;
    let left: Vec<_> = client.queued_posts().iter().map(|h| h.get()).collect();
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|local| matches!(local.state, SyncState::Error(_))));
    let mut after = client.post(&room, NewMessage::new("Chat/message", "after")).await.unwrap();
    assert_eq!(settle(&mut after).await.ordinal(), Some(3));
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    for code in ["too_large", "forbidden"] {
        let line =
            format!("chorus_edge_requests_total{{code=\"{code}\",op=\"post\",transport=\"ws\"}} 1");
        assert!(metrics.contains(&line), "sent exactly once: {line}\n{metrics}");
    }
    client.discard_post(left[0].local_id).await.unwrap();
    assert_eq!(client.queued_posts().len(), 1);
}

/// A field update based on a stale `messageCount` shows locally at once, meets a 409
/// `conflict` carrying the current stream, and goes to the app's callback, whose merge is
/// what the server ends up with.
#[tokio::test]
async fn a_conflicting_update_reaches_the_callback() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let token = server.token("alice", &[]);
    create_room(&server, &token, "Chat/room/1").await;
    let proxy = Proxy::start(&server.addr).await;
    let conflicts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&conflicts);
    let client = client_for(&proxy.url(), &token)
        .on_conflict(move |conflict: &chorus_client::Conflict| {
            seen.lock().unwrap().push(conflict.clone());
            let merged = format!(
                "{} + {}",
                conflict.theirs.title.clone().unwrap_or_default(),
                conflict.mine.title.clone().unwrap_or_default()
            );
            Resolution::Merge(StreamUpdate { title: Some(merged), ..StreamUpdate::default() })
        })
        .build()
        .unwrap();
    let room = StreamId::new("alice", "Chat/room/1");
    let live = client.stream(&room);
    let loaded = tokio::time::timeout(DEADLINE, live.wait_for(|s| s.state == LoadState::Synced))
        .await
        .unwrap();
    assert_eq!(loaded.value.as_ref().unwrap().message_count, Some(1));

    // Offline, someone else renames the room; this client still believes messageCount = 1.
    proxy.set_up(false);
    let mut connection = client.connection();
    tokio::time::timeout(DEADLINE, connection.wait_for(|c| !c.connected)).await.unwrap().unwrap();
    let api = Api::new(&server, server.token("alice", &[]));
    let path = format!("/v1/streams/alice/{}", enc("Chat/room/1"));
    let (status, _) = api.call("PATCH", &path, Some(json!({"title": "Theirs"}))).await;
    assert_eq!(status, 200);

    let mine = StreamUpdate { title: Some("Mine".into()), ..StreamUpdate::default() };
    let update = live.update(mine);
    tokio::pin!(update);
    let optimistic = tokio::select! {
        shown = live.wait_for(|s| s.origin == Origin::Local) => shown,
        outcome = &mut update => panic!("update finished offline: {outcome:?}"),
    };
    assert_eq!(optimistic.value.unwrap().title.as_deref(), Some("Mine"), "applied locally at once");
    proxy.set_up(true);
    let outcome = tokio::time::timeout(DEADLINE, update).await.unwrap().unwrap();

    let conflicts = conflicts.lock().unwrap().clone();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].theirs.title.as_deref(), Some("Theirs"));
    assert_eq!(conflicts[0].theirs.message_count, Some(2));
    assert_eq!(conflicts[0].base.message_count, Some(1));
    match outcome {
        UpdateOutcome::Applied(stream) => {
            assert_eq!(stream.title.as_deref(), Some("Theirs + Mine"))
        }
        other => panic!("{other:?}"),
    }
    let (_, current) = api.call("GET", &path, None).await;
    assert_eq!(current["title"], "Theirs + Mine");
}

/// A client restarted with the server down shows the stream and messages it showed last
/// time, from its store, and queues new posts beside them.
#[tokio::test]
async fn the_cache_serves_a_restarted_offline_client() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = dir.path().join("client.redb");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let server = Server::start_on(&data, port);
    let token = server.token("alice", &[]);
    create_room(&server, &token, "Chat/room/1").await;
    let room = StreamId::new("alice", "Chat/room/1");
    let build = || client_for(&url, &token).store_path(&store);
    {
        let client = build().build().unwrap();
        for i in 0..3 {
            let mut handle =
                client.post(&room, NewMessage::new("Chat/message", format!("c{i}"))).await.unwrap();
            settle(&mut handle).await;
        }
        let live = client.stream(&room);
        let messages = client.messages(&room);
        tokio::time::timeout(
            DEADLINE,
            live.wait_for(|s| {
                s.state == LoadState::Synced
                    && s.value.as_ref().and_then(|v| v.message_count) == Some(4)
            }),
        )
        .await
        .unwrap();
        tokio::time::timeout(DEADLINE, messages.wait_for(|s| s.value.messages.len() == 4))
            .await
            .unwrap();
    }
    server.kill();

    let client = reopen(build).await;
    let live = client.stream(&room);
    let messages = client.messages(&room);
    let cached =
        tokio::time::timeout(DEADLINE, live.wait_for(|s| s.origin == Origin::Cache)).await.unwrap();
    assert_eq!(cached.state, LoadState::Loading, "offline: not synced");
    let stream = cached.value.unwrap();
    assert_eq!((stream.message_count, stream.stream_type.as_deref()), (Some(4), Some("Chat/room")));
    let shown = tokio::time::timeout(DEADLINE, messages.wait_for(|s| s.origin == Origin::Cache))
        .await
        .unwrap();
    let contents: Vec<&str> = shown.value.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(&contents[1..], ["c0", "c1", "c2"]);

    let queued = client.post(&room, NewMessage::new("Chat/message", "offline")).await.unwrap();
    let pending =
        tokio::time::timeout(DEADLINE, messages.wait_for(|s| !s.value.pending.is_empty()))
            .await
            .unwrap();
    assert_eq!(pending.value.pending[0].message.content, "offline");
    assert_eq!(queued.get().state, SyncState::Syncing);
}
