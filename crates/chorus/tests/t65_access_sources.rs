//! Access contexts on a cluster of more than 3 nodes, with real `chorus node` processes: once
//! a 4th node has taken its share of the replicas, a node no longer holds every shard, and a
//! stream's `<type>*` rules, template and inheritAccess parent may live on shards its leader
//! holds no replica of. They are read where those shards are led, and a change to them takes
//! effect within the documented expiry (`SOURCE_TTL`, 1 s) on every node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use chorus_types::shard::shard_of;
use chorus_types::{PublisherId, StreamKey, StreamName};
use common::cluster::{Cluster, ShardView, admin_cli, user_token};
use common::{Ws, enc, ws_connect_addr, ws_reply, ws_send};
use futures_util::StreamExt;
use serde_json::{Value, json};

const FAST_RAFT: &str = "[raft]\nheartbeat_ms = 50\nelection_min_ms = 300\nelection_max_ms = 600\n";
const SHARDS: u16 = 8;

/// How long a change on another shard may take to reach every node: the source expiry (1 s)
/// plus room for a loaded test machine. The waits end as soon as the change shows.
const TAKES_EFFECT_WITHIN: Duration = Duration::from_secs(15);

fn shard(publisher: &str, name: &str) -> u32 {
    let key = StreamKey::new(PublisherId::new(publisher).unwrap(), StreamName::new(name).unwrap());
    u32::from(shard_of(&key, SHARDS).0)
}

/// The first `make(i)` whose shards (for publisher `publisher`, and each of `suffixes`
/// appended) are all in `among`.
fn name_on(
    among: &BTreeSet<u32>,
    publisher: &str,
    suffixes: &[&str],
    make: impl Fn(u32) -> String,
) -> String {
    (0..100_000)
        .map(make)
        .find(|base| {
            suffixes.iter().all(|s| among.contains(&shard(publisher, &format!("{base}{s}"))))
        })
        .expect("a name on the wanted shards")
}

/// Waits (until `TAKES_EFFECT_WITHIN`) for `check` to pass; returns how long it took.
async fn eventually<F, Fut>(what: &str, check: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(()) => return start.elapsed(),
            Err(e) => assert!(start.elapsed() < TAKES_EFFECT_WITHIN, "{what}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Member `i`'s answer to `user` fetching and posting to `path`: (fetch status, post status).
async fn try_access(cluster: &Cluster, i: usize, user: &str, path: &str) -> (u16, u16) {
    let api = cluster.api(i, Some(user));
    let (fetched, _) = api.call("GET", path, None).await;
    let body = json!({"type": "Chat/message", "content": format!("{user} via {i}")});
    let (posted, _) = api.call("POST", &format!("{path}/messages"), Some(body)).await;
    (fetched, posted)
}

/// `user` may fetch and post (200, 201) through every member, or through none (404, 404:
/// a caller who cannot see a stream is told it does not exist).
async fn access_everywhere(
    cluster: &Cluster,
    user: &str,
    path: &str,
    allowed: bool,
) -> Result<(), String> {
    let want = if allowed { (200, 201) } else { (404, 404) };
    for i in 0..cluster.members.len() {
        let got = try_access(cluster, i, user, path).await;
        if got != want {
            return Err(format!(
                "{user} through node {}: {got:?}, want {want:?}",
                cluster.members[i].id
            ));
        }
    }
    Ok(())
}

/// Waits until a 4-node placement has settled: every shard led, 3 voters, no joint change,
/// 6 replicas per node.
async fn settled(cluster: &Cluster) -> BTreeMap<u32, ShardView> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let views = cluster.shard_views().await;
        let mut spread: BTreeMap<u64, usize> = BTreeMap::new();
        for view in views.values().filter(|v| !v.joint && v.voters.len() == 3) {
            for id in &view.voters {
                *spread.entry(*id).or_default() += 1;
            }
        }
        if views.len() == usize::from(SHARDS)
            && spread.values().all(|n| *n == 6)
            && spread.len() == 4
        {
            return views;
        }
        assert!(Instant::now() < deadline, "placement did not settle: {views:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn put_rows(cluster: &Cluster, path: &str, rows: Value) {
    let (s, v) = cluster
        .api(0, None)
        .call("PUT", &format!("{path}/access"), Some(json!({"rows": rows})))
        .await;
    assert_eq!(s, 200, "{path}: {v}");
}

/// A WebSocket session of `user` on the node at `api` listening to alice's `stream`.
async fn listen(api: &str, user: &str, stream: &str) -> Ws {
    let mut ws = ws_connect_addr(api, &user_token(user)).await;
    let frame =
        json!({"id": 1, "op": "listen", "stream": {"publisherId": "alice", "name": stream}});
    ws_send(&mut ws, frame).await;
    let reply = ws_reply(&mut ws, 1).await;
    assert!(reply.get("ok").is_some(), "{user} listens: {reply}");
    ws
}

/// Posts to `path` (as the app) until the listen on `ws` ends with a `resync`, which must
/// come within the expiry; returns how long it took. Messages before it are fine (the
/// notice travels from another node); after it, none may come.
async fn listen_ends(cluster: &Cluster, ws: &mut Ws, path: &str) -> Duration {
    let start = Instant::now();
    loop {
        post_as_app(cluster, path).await;
        if frames(ws, Duration::from_millis(200)).await.iter().any(|v| v["ev"] == "resync") {
            let took = start.elapsed();
            post_as_app(cluster, path).await;
            let after = frames(ws, Duration::from_millis(300)).await;
            assert!(after.is_empty(), "frames after the resync: {after:?}");
            return took;
        }
        assert!(start.elapsed() < TAKES_EFFECT_WITHIN, "the open listen was not ended");
    }
}

async fn post_as_app(cluster: &Cluster, path: &str) {
    let body = json!({"type": "Chat/message", "content": "after the revoke"});
    let (s, v) = cluster.api(0, None).call("POST", &format!("{path}/messages"), Some(body)).await;
    assert_eq!(s, 201, "{v}");
}

/// Access notices relayed by every member so far.
async fn relayed(cluster: &Cluster) -> f64 {
    let mut sum = 0.0;
    for i in 0..cluster.members.len() {
        sum += cluster.metric(i, "chorus_node_access_notices_relayed_total").await;
    }
    sum
}

/// The frames `ws` receives within `wait`.
async fn frames(ws: &mut Ws, wait: Duration) -> Vec<Value> {
    let until = tokio::time::Instant::now() + wait;
    let mut got = Vec::new();
    while let Ok(Some(frame)) = tokio::time::timeout_at(until, ws.next()).await {
        let text = frame.expect("websocket").into_text().expect("text").to_string();
        got.push(serde_json::from_str(&text).unwrap_or_default());
    }
    got
}

/// Property: on 4 nodes, where stream S's leader holds no replica of the shards of S's
/// `<type>*` rule, its template and its inheritAccess parent, S still starts from its template
/// and grants exactly what those rows say through every node — and granting or revoking a
/// rule or a parent's row on those shards takes effect everywhere within the expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_sources_on_shards_the_leader_does_not_hold() {
    let mut cluster = Cluster::start(3, SHARDS, FAST_RAFT);
    let new = cluster.add_member(4);
    let peers = cluster.peers_of(&[0, new]);
    cluster.spawn_with(new, &peers, &["--join"]);
    let new_addr = cluster.members[new].peer.clone();
    let (ok, text) =
        admin_cli(&cluster.members[0].peer, &["add-node", "--id", "4", "--addr", &new_addr]).await;
    assert!(ok, "add-node failed: {text}");
    let views = settled(&cluster).await;
    cluster.wait_ready(new);

    // A node that leads a shard (S goes there) and lacks others (its sources go there).
    let (leader, led, lacking) = (1..=4)
        .find_map(|id| {
            let led: BTreeSet<u32> =
                views.iter().filter(|(_, v)| v.leader == id).map(|(g, _)| *g).collect();
            let lacking: BTreeSet<u32> =
                views.iter().filter(|(_, v)| !v.voters.contains(&id)).map(|(g, _)| *g).collect();
            (!led.is_empty() && !lacking.is_empty()).then_some((id, led, lacking))
        })
        .expect("a node that leads a shard and lacks another");
    // The app's `<type>*` rule and template of type T, and the parent P, on shards `leader`
    // does not hold; S, of type T, on a shard it leads.
    let ty = name_on(&lacking, "", &["*", "/"], |i| format!("Remote/t{i}"));
    let parent = name_on(&lacking, "alice", &[""], |i| format!("Doc/parent{i}"));
    let stream = name_on(&led, "alice", &[""], |i| format!("Room/s{i}"));
    let rule_path = format!("/v1/streams/~/{}", enc(&format!("{ty}*")));
    let template_path = format!("/v1/streams/~/{}", enc(&format!("{ty}/")));
    let parent_path = format!("/v1/streams/alice/{}", enc(&parent));
    let path = format!("/v1/streams/alice/{}", enc(&stream));
    eprintln!(
        "node {leader} leads {stream} (shard {}), lacks shards {lacking:?}",
        shard("alice", &stream)
    );

    // The template (tina may read and post) and the parent (carol may) exist before S.
    let app = cluster.api(0, None);
    let template = json!({"publisherId": "", "type": ty, "name": format!("{ty}/"), "title": "From the template", "readLevel": 0, "writeLevel": 0});
    let (s, v) = app.call("POST", "/v1/streams", Some(template)).await;
    assert_eq!(s, 201, "template: {v}");
    put_rows(
        &cluster,
        &template_path,
        json!([{"ofUserId": "tina", "readLevel": 35, "writeLevel": 20}]),
    )
    .await;
    let doc = json!({"publisherId": "alice", "type": "Doc/page", "name": parent, "readLevel": 0, "writeLevel": 0});
    let (s, v) = app.call("POST", "/v1/streams", Some(doc)).await;
    assert_eq!(s, 201, "parent: {v}");
    put_rows(
        &cluster,
        &parent_path,
        json!([{"ofUserId": "carol", "readLevel": 35, "writeLevel": 20}]),
    )
    .await;

    // S is created on `leader`, through another node, from the template it does not hold.
    let other = (0..cluster.members.len()).find(|i| cluster.members[*i].id != leader).unwrap();
    let body = json!({"publisherId": "alice", "type": ty, "name": stream, "inheritAccess": [["alice", parent]]});
    let (s, v) = cluster.api(other, None).call("POST", "/v1/streams", Some(body)).await;
    assert_eq!(s, 201, "create: {v}");
    assert_eq!(
        (v["title"].as_str(), v["readLevel"].as_i64()),
        (Some("From the template"), Some(0)),
        "{v}"
    );
    let (s, rows) = app.call("GET", &format!("{path}/access"), None).await;
    assert_eq!((s, rows["rows"][0]["ofUserId"].as_str()), (200, Some("tina")), "{rows}");

    // Through every node: tina (template row), carol (the parent's row); nobody else.
    access_everywhere(&cluster, "tina", &path, true).await.unwrap();
    access_everywhere(&cluster, "carol", &path, true).await.unwrap();
    access_everywhere(&cluster, "bob", &path, false).await.unwrap();

    // A `<type>*` row for bob on a shard `leader` does not hold: granted everywhere within
    // the expiry (`leader` had read, and kept, the rule without rows a moment ago).
    put_rows(&cluster, &rule_path, json!([{"ofUserId": "bob", "readLevel": 35, "writeLevel": 20}]))
        .await;
    let took =
        eventually("the rule's grant", || access_everywhere(&cluster, "bob", &path, true)).await;
    eprintln!("rule grant took effect everywhere in {took:?}");
    access_everywhere(&cluster, "dave", &path, false).await.unwrap();

    // carol and bob listen to S on `leader`, which holds neither the parent nor the rule.
    let leader_api = cluster.members[cluster.index_of(leader)].api.clone();
    let mut carol = listen(&leader_api, "carol", &stream).await;
    let mut bob = listen(&leader_api, "bob", &stream).await;
    let relayed_before = relayed(&cluster).await;

    // Revoking carol's row on the parent, and then the rule: denied everywhere within the
    // expiry, while the others keep their access; and the open listen of whoever lost it
    // ends with a `resync` (the parent's and the rule's leaders relay the change to
    // `leader`), while the other's goes on.
    put_rows(&cluster, &parent_path, json!([])).await;
    let took =
        eventually("the parent's revoke", || access_everywhere(&cluster, "carol", &path, false))
            .await;
    eprintln!("parent revoke took effect everywhere in {took:?}");
    access_everywhere(&cluster, "bob", &path, true).await.unwrap();
    let took = listen_ends(&cluster, &mut carol, &path).await;
    eprintln!("carol's open listen ended {took:?} after the parent's revoke took effect");
    let bobs = frames(&mut bob, Duration::from_millis(300)).await;
    assert!(
        !bobs.is_empty() && bobs.iter().all(|v| v["ev"] == "message"),
        "bob keeps his listen: {bobs:?}"
    );
    put_rows(&cluster, &rule_path, json!([])).await;
    let took =
        eventually("the rule's revoke", || access_everywhere(&cluster, "bob", &path, false)).await;
    eprintln!("rule revoke took effect everywhere in {took:?}");
    let took = listen_ends(&cluster, &mut bob, &path).await;
    eprintln!("bob's open listen ended {took:?} after the rule's revoke took effect");
    let relayed_after = relayed(&cluster).await;
    assert!(relayed_after >= relayed_before + 2.0, "{relayed_before} → {relayed_after} relayed");
    access_everywhere(&cluster, "tina", &path, true).await.unwrap();

    // It was `leader` that read them from the nodes leading those shards.
    let views = cluster.shard_views().await;
    assert_eq!(views[&shard("alice", &stream)].leader, leader, "S's leader moved during the test");
    let reads =
        cluster.metric(cluster.index_of(leader), "chorus_node_access_source_reads_total").await;
    assert!(reads >= 3.0, "node {leader} read {reads} sources from other nodes");
}
