//! `chorus edge` processes in front of a 3-node cluster, with real WebSocket clients: every
//! session on two edges gets every message of a stream once and in order while it is posted
//! to; each edge follows the stream once however many sessions listen; a slow session gets
//! `resync` while the others go on; an edge restart and a SIGKILL of the stream's shard leader
//! during fan-out leave every session with a gap-free history after it resumes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{API_KEY, Cluster, user_token};
use common::edge::Edge;
use common::{Api, enc, ws_connect_addr, ws_next, ws_reply, ws_send};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const FAST_RAFT: &str = "[raft]\nheartbeat_ms = 50\nelection_min_ms = 300\nelection_max_ms = 600\n";
const PUBLISHER: &str = "app";

fn stream(name: &str) -> Value {
    json!({"publisherId": PUBLISHER, "name": name})
}

/// The shard (of the tests' 4) that `PUBLISHER`'s stream `name` lives on.
fn shard_of_name(name: &str) -> u32 {
    use chorus_types::{PublisherId, StreamKey, StreamName, shard::shard_of};
    let key = StreamKey::new(PublisherId::new(PUBLISHER).unwrap(), StreamName::new(name).unwrap());
    u32::from(shard_of(&key, 4).0)
}

fn messages_path(name: &str) -> String {
    format!("/v1/streams/{PUBLISHER}/{}/messages", enc(name))
}

async fn metric(addr: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing on {addr}"))
}

fn edge_api(edge: &Edge) -> Api {
    Api::at(format!("http://{}", edge.addr), API_KEY.into(), None)
}

async fn create(api: &Api, name: &str) {
    let body = json!({"publisherId": PUBLISHER, "name": name, "type": "Chat/room", "readLevel": 40, "writeLevel": 40});
    let (s, v) = api.call("POST", "/v1/streams", Some(body)).await;
    assert_eq!(s, 201, "{v}");
}

/// Posts `content` with its own clientMsgId, retrying until it is acknowledged (the edge or
/// the leader may be down for a moment). Returns the ordinal.
async fn post(api: &Api, name: &str, content: &str) -> u64 {
    let body = json!({"type": "Chat/message", "content": content, "clientMsgId": content});
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200 | 201, v)) =
            api.try_call("POST", &messages_path(name), Some(body.clone())).await
        {
            return v["ordinal"].as_u64().expect("ordinal");
        }
        assert!(Instant::now() < deadline, "post {content} never acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stream's messageCount once posting is over.
async fn message_count(api: &Api, name: &str) -> u64 {
    let (s, v) = api.call("GET", &format!("/v1/streams/{PUBLISHER}/{}", enc(name)), None).await;
    assert_eq!(s, 200, "{v}");
    v["messageCount"].as_u64().unwrap()
}

/// A client that follows a stream the way an SDK does: listen with `since` = the last ordinal
/// it has; on a broken socket, reconnect (to any of `edges`) and listen again; on `resync`,
/// fetch history from `from`, then listen again. Panics on a gap, duplicate or reordering.
/// Returns the ordinals received (each must be the previous + 1), once `target` is reached.
async fn follow(edges: Vec<String>, name: String, target: watch::Receiver<u64>) -> Vec<u64> {
    follow_counting(edges, name, target, Arc::default()).await
}

/// [`follow`], counting in `resumes` the listens it opened again after a broken socket.
async fn follow_counting(
    edges: Vec<String>,
    name: String,
    mut target: watch::Receiver<u64>,
    resumes: Arc<AtomicUsize>,
) -> Vec<u64> {
    let mut got: Vec<u64> = Vec::new();
    let mut attempt = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    'session: loop {
        let done = |got: &Vec<u64>, t: u64| t > 0 && got.last().copied().unwrap_or(0) >= t;
        if done(&got, *target.borrow()) {
            return got;
        }
        assert!(Instant::now() < deadline, "follower of {name} stuck at {:?}", got.last());
        let addr = &edges[attempt % edges.len()];
        attempt += 1;
        let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
        req.headers_mut().insert("Authorization", format!("Bearer {API_KEY}").parse().unwrap());
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(req).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let last = got.last().copied().unwrap_or(0);
        if attempt > 1 {
            resumes.fetch_add(1, Ordering::Relaxed);
        }
        let listen = json!({"id": 1, "op": "listen", "stream": stream(&name), "since": last});
        if futures_util::SinkExt::send(&mut ws, Message::text(listen.to_string())).await.is_err() {
            continue;
        }
        loop {
            if done(&got, *target.borrow()) {
                return got;
            }
            let next = tokio::select! {
                frame = ws.next() => frame,
                // The sender outlives every follower; re-check the target above.
                _ = target.changed() => continue,
            };
            let Some(Ok(frame)) = next else { continue 'session };
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["re"] == json!(1) {
                assert_eq!(v["ok"]["recovered"], true, "resume after {last}: {v}");
            } else if v["ev"] == "message" {
                let ordinal = v["message"]["ordinal"].as_u64().unwrap();
                let expected = got.last().copied().unwrap_or(0) + 1;
                assert_eq!(ordinal, expected, "{name}: gap, duplicate or reorder");
                got.push(ordinal);
            } else if v["ev"] == "resync" {
                let from = v["from"].as_u64().unwrap();
                assert_eq!(from, got.last().copied().unwrap_or(0) + 1, "resync {v}");
                catch_up(&edges, &name, &mut got).await;
                continue 'session;
            }
        }
    }
}

/// Reads history after the last ordinal in `got` until it is exhausted.
async fn catch_up(edges: &[String], name: &str, got: &mut Vec<u64>) {
    let api = Api::at(format!("http://{}", edges[0]), API_KEY.into(), None);
    loop {
        let min = got.last().copied().unwrap_or(0) + 1;
        let path = format!("{}?min={min}&limit=1000", messages_path(name));
        let Ok((200, v)) = api.try_call("GET", &path, None).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let page = v["messages"].as_array().unwrap();
        if page.is_empty() {
            return;
        }
        for m in page {
            let ordinal = m["ordinal"].as_u64().unwrap();
            assert_eq!(ordinal, got.last().copied().unwrap_or(0) + 1, "history gap");
            got.push(ordinal);
        }
    }
}

use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_on_two_edges_get_every_message_once_in_order() {
    let cluster = Cluster::start(3, 4, FAST_RAFT);
    let edges = [Edge::start(&cluster, &[]), Edge::start(&cluster, &[])];
    const NAME: &str = "Chat/room/fanout";
    create(&edge_api(&edges[0]), NAME).await;

    // 40 sessions per edge; half listen before the posts start, half join in the middle
    // (backlog from history or the ring, then live).
    const SESSIONS: usize = 40;
    const POSTS: u64 = 150;
    let (target_tx, target) = watch::channel(0u64);
    let mut followers = Vec::new();
    for i in 0..SESSIONS {
        let edge = edges[i % 2].addr.clone();
        followers.push(tokio::spawn(follow(vec![edge], NAME.into(), target.clone())));
    }
    let poster = edge_api(&edges[1]);
    for k in 0..POSTS {
        if k == POSTS / 2 {
            for i in 0..SESSIONS {
                let edge = edges[i % 2].addr.clone();
                followers.push(tokio::spawn(follow(vec![edge], NAME.into(), target.clone())));
            }
        }
        post(&poster, NAME, &format!("m{k}")).await;
    }
    let total = message_count(&poster, NAME).await;
    assert!(total > POSTS);
    // While all 80 sessions still listen: each edge follows the stream once, and the nodes
    // serve exactly one listen per edge.
    for edge in &edges {
        assert_eq!(metric(&edge.addr, "chorus_edge_feeds").await, 1.0);
        assert_eq!(metric(&edge.addr, "chorus_edge_listens").await, SESSIONS as f64);
    }
    let mut node_listens = 0.0;
    for m in &cluster.members {
        node_listens += metric(&m.api, "chorus_node_listens").await;
    }
    assert_eq!(node_listens, 2.0, "one upstream listen per edge");
    // Edges send to the shard's leader (they learn the leaders from the nodes): of the 150
    // posts and 80 listens, next to none was forwarded between nodes (about two thirds would
    // be, sent to an arbitrary node). Access contexts reading their sources (`<type>*` rules,
    // templates) from those shards' leaders are forwarded too, and are not the edges' doing.
    let mut forwarded = 0.0;
    for m in &cluster.members {
        forwarded += metric(&m.api, "chorus_node_forwarded_calls_total").await;
        forwarded -= metric(&m.api, "chorus_node_access_source_reads_total").await;
    }
    assert!(forwarded <= 20.0, "{forwarded} calls forwarded between nodes");
    target_tx.send_replace(total);
    for f in followers {
        let got = f.await.expect("follower");
        assert_eq!(got, (1..=total).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_session_gets_resync_while_the_others_go_on() {
    let cluster = Cluster::start(3, 4, FAST_RAFT);
    // A short outbound queue, so a session that stops reading falls behind quickly.
    let edge = Edge::start(&cluster, &["--session-queue", "8"]);
    const NAME: &str = "Chat/room/slow";
    let api = edge_api(&edge);
    create(&api, NAME).await;

    let (target_tx, target) = watch::channel(0u64);
    let fast = tokio::spawn(follow(vec![edge.addr.clone()], NAME.into(), target));
    // The slow session listens, then reads nothing while large messages pile up.
    let mut slow = ws_connect_addr(&edge.addr, API_KEY).await;
    ws_send(&mut slow, json!({"id": 1, "op": "listen", "stream": stream(NAME), "since": 0})).await;
    assert_eq!(ws_reply(&mut slow, 1).await["ok"]["recovered"], true);

    // Enough bytes to fill the loopback socket buffers (a few MiB each way) and then the queue.
    let big = "x".repeat(60_000);
    const POSTS: u64 = 300;
    for k in 0..POSTS {
        let body = json!({"type": "Chat/message", "content": format!("b{k}"), "instructions": {"pad": big}, "clientMsgId": format!("b{k}")});
        let (s, v) = api.call("POST", &messages_path(NAME), Some(body)).await;
        assert_eq!(s, 201, "{v}");
    }
    let total = message_count(&api, NAME).await;
    target_tx.send_replace(total);
    // The fast session got everything while the slow one was stuck.
    assert_eq!(fast.await.expect("fast follower"), (1..=total).collect::<Vec<_>>());

    // The slow session now reads: messages in order, then a resync pointing right after the
    // last one it got; history from there completes it.
    let mut last = 0;
    let from = loop {
        let v = ws_next(&mut slow).await;
        match v["ev"].as_str() {
            Some("message") => {
                let ordinal = v["message"]["ordinal"].as_u64().unwrap();
                assert_eq!(ordinal, last + 1);
                last = ordinal;
            }
            Some("resync") => break v["from"].as_u64().unwrap(),
            _ => panic!("unexpected {v}"),
        }
    };
    assert_eq!(from, last + 1);
    assert!(last < total, "the slow session fell behind");
    assert!(metric(&edge.addr, "chorus_edge_resyncs_total").await >= 1.0);
    let mut got: Vec<u64> = (1..=last).collect();
    catch_up(std::slice::from_ref(&edge.addr), NAME, &mut got).await;
    assert_eq!(got, (1..=total).collect::<Vec<_>>());
    // Listening again from there works: a new message arrives live.
    ws_send(&mut slow, json!({"id": 2, "op": "listen", "stream": stream(NAME), "since": total}))
        .await;
    assert_eq!(ws_reply(&mut slow, 2).await["ok"]["recovered"], true);
    let ordinal = post(&api, NAME, "after").await;
    let v = ws_next(&mut slow).await;
    assert_eq!(v["message"]["ordinal"].as_u64(), Some(ordinal), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edge_restart_and_leader_kill_during_fanout_leave_gap_free_histories() {
    let mut cluster = Cluster::start(3, 4, FAST_RAFT);
    let mut edges = [Edge::start(&cluster, &[]), Edge::start(&cluster, &[])];
    const NAME: &str = "Chat/room/chaos";
    let shard = shard_of_name(NAME);
    create(&edge_api(&edges[1]), NAME).await;

    // 20 sessions on edge 0 (which will restart: they reconnect to it, or to edge 1), 20 on
    // edge 1.
    let (target_tx, target) = watch::channel(0u64);
    let addrs = [edges[0].addr.clone(), edges[1].addr.clone()];
    let mut followers = Vec::new();
    let resumes = Arc::new(AtomicUsize::new(0));
    for i in 0..40 {
        let list = if i % 2 == 0 {
            vec![addrs[0].clone(), addrs[1].clone()]
        } else {
            vec![addrs[1].clone()]
        };
        let follower = follow_counting(list, NAME.into(), target.clone(), resumes.clone());
        followers.push(tokio::spawn(follower));
    }

    let poster = edge_api(&edges[1]);
    const POSTS: u64 = 120;
    for k in 0..POSTS {
        if k == 30 {
            edges[0].kill();
        }
        if k == 50 {
            edges[0].spawn();
        }
        if k == 70 {
            let leader = cluster.leader_of(0, shard).await;
            cluster.kill(cluster.index_of(leader));
        }
        post(&poster, NAME, &format!("c{k}")).await;
    }
    let total = message_count(&poster, NAME).await;
    target_tx.send_replace(total);
    for f in followers {
        assert_eq!(f.await.expect("follower"), (1..=total).collect::<Vec<_>>());
    }
    // Every session of the killed edge resumed (with `since`, `recovered: true`).
    assert!(resumes.load(Ordering::Relaxed) >= 20, "{resumes:?}");
}

/// Through a real edge and the owner's subscription stream: removing a listener's access row
/// ends its open listen with a `resync` before the next message, while a listener who keeps
/// access gets that message on the same edge feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_taken_away_ends_listens_on_an_edge() {
    let cluster = Cluster::start(3, 4, FAST_RAFT);
    let edge = Edge::start(&cluster, &[]);
    let api = edge_api(&edge);
    let name = "Chat/room/private";
    let body = json!({"publisherId": PUBLISHER, "name": name, "type": "Chat/room", "readLevel": 0});
    let (s, v) = api.call("POST", "/v1/streams", Some(body)).await;
    assert_eq!(s, 201, "{v}");
    let access = format!("/v1/streams/{PUBLISHER}/{}/access", enc(name));
    let rows = |users: &[&str]| json!({"rows": users.iter().map(|u| json!({"ofUserId": u, "readLevel": 35})).collect::<Vec<_>>()});
    let (s, v) = api.call("PUT", &access, Some(rows(&["bob", "carol"]))).await;
    assert_eq!(s, 200, "{v}");

    let mut bob = ws_connect_addr(&edge.addr, &user_token("bob")).await;
    let mut carol = ws_connect_addr(&edge.addr, &user_token("carol")).await;
    for ws in [&mut bob, &mut carol] {
        ws_send(ws, json!({"id": 1, "op": "listen", "stream": stream(name)})).await;
        let ok = ws_reply(ws, 1).await;
        assert!(ok.get("ok").is_some(), "{ok}");
    }
    let (s, v) = api.call("PUT", &access, Some(rows(&["carol"]))).await;
    assert_eq!(s, 200, "{v}");
    post(&api, name, "after the change").await;

    let ev = ws_next(&mut bob).await;
    assert_eq!(ev["ev"], "resync", "bob's listen ends before the message: {ev}");
    let ev = ws_next(&mut carol).await;
    assert_eq!(ev["message"]["content"], "after the change", "{ev}");
}

/// A node stopping on SIGTERM while it leads a stream's shard (a rolling restart) refuses the
/// calls it will not run, so the edge and the other nodes send them on to the shard's next
/// leader: a client posting through the edge with `clientMsgId`s gets every post acknowledged
/// on its first try (no `unavailable`, no `timeout`), and a session listening on the edge
/// keeps a gap-free stream. It used to get seconds of 503 "shard proposer stopped" and 504s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_stopping_on_sigterm_costs_clients_of_the_edge_no_errors() {
    let mut cluster = Cluster::start(3, 4, FAST_RAFT);
    let edge = Edge::start(&cluster, &[]);
    const NAME: &str = "Chat/room/rolling";
    let shard = shard_of_name(NAME);
    let api = edge_api(&edge);
    create(&api, NAME).await;
    let (target_tx, target) = watch::channel(0u64);
    let follower = tokio::spawn(follow(vec![edge.addr.clone()], NAME.into(), target));

    let leader = cluster.index_of(cluster.leader_of(0, shard).await);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let poster = tokio::spawn(async move {
        let mut failures = Vec::new();
        let mut k = 0u64;
        // 20 posts before the stop, then on until 60 more after the node has exited.
        let mut after_stop = 0;
        while after_stop < 60 {
            if *stop_rx.borrow_and_update() {
                after_stop += 1;
            }
            let body = json!({"type": "Chat/message", "content": format!("r{k}"), "clientMsgId": format!("r{k}")});
            match api.try_call("POST", &messages_path(NAME), Some(body)).await {
                Ok((200 | 201, _)) => {}
                other => failures.push(format!("post r{k}: {other:?}")),
            }
            k += 1;
        }
        (k, failures)
    });
    // Let some posts through, then stop the leader while posts keep coming.
    while message_count(&edge_api(&edge), NAME).await < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped =
        tokio::task::block_in_place(|| cluster.terminate(leader, Duration::from_secs(30)));
    assert!(stopped.is_some_and(|s| s.success()), "the node stops on SIGTERM: {stopped:?}");
    stop_tx.send_replace(true);
    let (posted, failures) = poster.await.unwrap();
    assert!(failures.is_empty(), "posts that were not acknowledged first time: {failures:#?}");

    let total = message_count(&edge_api(&edge), NAME).await;
    // Ordinal 1 is the stream's `Streams/created`.
    if total != posted + 1 {
        let (_, v) = edge_api(&edge)
            .call("GET", &format!("{}?min=1&limit=1000", messages_path(NAME)), None)
            .await;
        let listed: Vec<String> = v["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| format!("{} {} {}", m["ordinal"], m["type"], m["content"]))
            .collect();
        panic!("{posted} posts acknowledged, {total} stored: {listed:#?}");
    }
    target_tx.send_replace(total);
    assert_eq!(follower.await.unwrap(), (1..=total).collect::<Vec<_>>());
}

/// A stream's leader that stops answering without closing its connections (paused here, as a
/// stalled VM or a one-way partition would leave it) holds no read, and no post with a
/// `clientMsgId`, through an edge for the whole request timeout: the edge sends a copy through
/// another node, which routes it to the leader the others elected meanwhile. The post is
/// stored once however many of its copies run (the dedupe table answers the others).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_and_deduplicated_posts_through_an_edge_are_not_held_by_a_paused_leader() {
    let cluster = Cluster::start(3, 4, FAST_RAFT);
    let edge = Edge::start(&cluster, &[]);
    const NAME: &str = "Chat/room/paused";
    let shard = shard_of_name(NAME);
    let api = edge_api(&edge);
    create(&api, NAME).await;
    post(&api, NAME, "before").await;
    // The edge learns the leader (its topology poll), so the read goes there first.
    let leader = cluster.index_of(cluster.leader_of(0, shard).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    cluster.signal(leader, "-STOP");
    let path = format!("/v1/streams/{PUBLISHER}/{}", enc(NAME));
    let started = Instant::now();
    let body = json!({"type": "Chat/message", "content": "paused", "clientMsgId": "paused-1"});
    let paused_post = async {
        let posted = api.try_call("POST", &messages_path(NAME), Some(body)).await;
        (posted, started.elapsed())
    };
    let reads = async {
        let fetched = api.try_call("GET", &path, None).await;
        let fetch_took = started.elapsed();
        let history = api.try_call("GET", &format!("{}?min=1", messages_path(NAME)), None).await;
        (fetched, fetch_took, history, started.elapsed())
    };
    let ((posted, post_took), (fetched, fetch_took, history, took)) =
        tokio::join!(paused_post, reads);
    cluster.signal(leader, "-CONT");
    eprintln!("fetch answered after {fetch_took:?}, history after {took:?}, post {post_took:?}");
    // Held, not failed, is what a paused leader did to reads: without the copy the fetch was
    // answered only when the node's request timeout (10 s) freed it, 9.5 s here. With it, a
    // read waits for the copy (1.5 s) and the new leader; half the timeout leaves room for a
    // loaded machine.
    assert!(fetch_took < Duration::from_secs(5), "the fetch was held {fetch_took:?}");
    assert!(took < Duration::from_secs(10), "the two reads were held {took:?}");
    let (s, v) = fetched.expect("fetch answered");
    assert_eq!(s, 200, "fetch with the leader paused: {v}");
    // The post runs beside it: before or after.
    assert!(matches!(v["messageCount"].as_u64(), Some(2 | 3)), "{v}");
    let (s, v) = history.expect("history answered");
    assert_eq!(s, 200, "history with the leader paused: {v}");
    assert_eq!(v["messages"][1]["content"], "before", "{v}");
    // Held like the reads without the copy: the edge gave up at its timeout (12 s).
    assert!(post_took < Duration::from_secs(5), "the post was held {post_took:?}");
    let (s, v) = posted.expect("post answered");
    // 200 when the copy that answered found the other one's message (the answer to a retry).
    assert!(s == 201 || s == 200, "post with the leader paused: {s} {v}");
    assert_eq!(v["ordinal"], 3, "{v}");

    // The resumed node still holds the first copy; whatever it does with it, the stream has
    // the message once.
    assert_paused_post_stored_once(&api, NAME).await;
}

/// The same for a client of a node that holds a replica of the stream's shard but does not
/// lead it: its router forwards the call to the leader it knows and, once its replica sees
/// another leader elected while the call is unanswered, dispatches it to that one as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_and_deduplicated_posts_through_a_follower_are_not_held_by_a_paused_leader() {
    let cluster = Cluster::start(3, 4, FAST_RAFT);
    const NAME: &str = "Chat/room/paused-node";
    let shard = shard_of_name(NAME);
    let api = cluster.api(0, None);
    create(&api, NAME).await;
    post(&api, NAME, "before").await;
    // The leader as the node the client talks to sees it, just before the pause.
    let (leader, via) = loop {
        let id = cluster.leader_of(0, shard).await;
        if id != 0 {
            let leader = cluster.index_of(id);
            let via = (leader + 1) % 3;
            if cluster.leader_of(via, shard).await == id {
                break (leader, via);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let api = cluster.api(via, None);
    let copies_before = cluster.metric(via, "chorus_node_copied_calls_total").await;

    cluster.signal(leader, "-STOP");
    let started = Instant::now();
    let body = json!({"type": "Chat/message", "content": "paused", "clientMsgId": "paused-1"});
    let paused_post = async {
        let posted = api.try_call("POST", &messages_path(NAME), Some(body)).await;
        (posted, started.elapsed())
    };
    let fetch = async {
        let path = format!("/v1/streams/{PUBLISHER}/{}", enc(NAME));
        (api.try_call("GET", &path, None).await, started.elapsed())
    };
    let ((posted, post_took), (fetched, fetch_took)) = tokio::join!(paused_post, fetch);
    cluster.signal(leader, "-CONT");
    eprintln!("post answered after {post_took:?}, fetch after {fetch_took:?}");
    // Without the copy both waited for the node's request timeout (10 s).
    assert!(post_took < Duration::from_secs(5), "the post was held {post_took:?}");
    assert!(fetch_took < Duration::from_secs(5), "the fetch was held {fetch_took:?}");
    let (s, v) = posted.expect("post answered");
    // 200 when the copy that answered found the other one's message (the answer to a retry).
    assert!(s == 201 || s == 200, "post with the leader paused: {s} {v}");
    assert_eq!(v["ordinal"], 3, "{v}");
    let (s, v) = fetched.expect("fetch answered");
    assert_eq!(s, 200, "fetch with the leader paused: {v}");
    assert!(matches!(v["messageCount"].as_u64(), Some(2 | 3)), "{v}");
    let copies = cluster.metric(via, "chorus_node_copied_calls_total").await;
    assert!(copies >= copies_before + 2.0, "{copies_before} -> {copies} copied calls");

    // The paused leader's copy of the post, whatever becomes of it, adds nothing.
    assert_paused_post_stored_once(&api, NAME).await;
}

/// After a paused leader resumed: a later post shows the stream's end (ordinal 4, after the
/// creation, "before" and "paused"), and "paused" is stored once.
async fn assert_paused_post_stored_once(api: &Api, name: &str) {
    assert_eq!(post(api, name, "after").await, 4);
    let (s, v) = api.call("GET", &format!("{}?min=1", messages_path(name)), None).await;
    assert_eq!(s, 200, "{v}");
    let contents: Vec<&str> =
        v["messages"].as_array().unwrap().iter().filter_map(|m| m["content"].as_str()).collect();
    assert_eq!(contents.iter().filter(|c| **c == "paused").count(), 1, "{v}");
    assert_eq!(message_count(api, name).await, 4, "{v}");
}
