//! The clients: sequential posters (each with its own clientMsgIds), a member that joins and
//! leaves, and WebSocket listeners. Each retries the way the protocol tells clients to and
//! records what it was finally told. With edges, half the writers post through the edges only,
//! the member uses edges and nodes alike, and each listen session goes to an edge or a node
//! (even odds).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::api::{self, PUBLISHER, Reply, stream_name, stream_path};
use crate::cluster::API_KEY;
use crate::history::{Event, ListenSession, Membership, Outcome, Post, Recorder, Via};
use crate::rng::Rng;

/// How long one operation is retried before its outcome is recorded as unknown.
const OP_DEADLINE: Duration = Duration::from_secs(20);

#[derive(Clone)]
pub struct Env {
    /// The nodes' own API base URLs.
    pub nodes: Vec<String>,
    /// The edges' API base URLs.
    pub edges: Vec<String>,
    pub streams: usize,
    pub recorder: Recorder,
    pub stop: Arc<AtomicBool>,
}

impl Env {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Writer `client`'s endpoints: the edges for odd writers (when there are edges), else the
    /// nodes.
    fn writer_targets(&self, client: usize) -> (bool, Vec<String>) {
        if client % 2 == 1 && !self.edges.is_empty() {
            (true, self.edges.clone())
        } else {
            (false, self.nodes.clone())
        }
    }

    fn url(&self, via: Via) -> &str {
        match via {
            Via::Node(n) => &self.nodes[n],
            Via::Edge(e) => &self.edges[e],
        }
    }
}

/// Runs one operation against endpoint after endpoint of `targets` (nodes or edges) until it
/// is acknowledged, refused for good or out of time.
async fn with_retries(
    targets: &[String],
    http: &reqwest::Client,
    rng: &mut Rng,
    method: Method,
    path: &str,
    user: Option<&str>,
    body: Value,
) -> (Outcome, Option<Value>) {
    let deadline = Instant::now() + OP_DEADLINE;
    let mut node = rng.below(targets.len());
    let mut maybe = false;
    loop {
        match api::call(http, &targets[node], method.clone(), path, user, Some(body.clone())).await
        {
            Reply::Ok(v) => {
                return (Outcome::Ok(api::ordinal(&v)), Some(v));
            }
            Reply::Final(e) if !maybe => return (Outcome::Error(e), None),
            // A final answer after an attempt that may have landed proves nothing.
            Reply::Final(_) => return (Outcome::Unknown, None),
            Reply::Retry { maybe_done, .. } => maybe |= maybe_done,
        }
        if Instant::now() > deadline {
            return (if maybe { Outcome::Unknown } else { Outcome::Error("gave up".into()) }, None);
        }
        node = (node + 1) % targets.len();
        tokio::time::sleep(Duration::from_millis(rng.range(20, 100))).await;
    }
}

pub async fn create_streams(env: &Env) -> anyhow::Result<()> {
    let http = api::client();
    let mut rng = Rng::new(0);
    for s in 0..env.streams {
        let body = json!({"publisherId": PUBLISHER, "name": stream_name(s), "type": "Chat/room"});
        let (outcome, _) =
            with_retries(&env.nodes, &http, &mut rng, Method::POST, "/v1/streams", None, body)
                .await;
        if !matches!(outcome, Outcome::Ok(_)) {
            anyhow::bail!("could not create stream {s}: {outcome:?}");
        }
    }
    Ok(())
}

/// A sequential client: one post at a time, each with a fresh clientMsgId retried until
/// answered.
pub async fn writer(env: Env, client: usize, seed: u64) {
    let http = api::client();
    let mut rng = Rng::new(seed);
    let (via_edge, targets) = env.writer_targets(client);
    let mut seq = 0;
    while !env.stopped() {
        let stream = rng.below(env.streams);
        let id = format!("c{client}-{seq}");
        let body = json!({"type": "Chat/message", "content": seq.to_string(), "clientMsgId": id});
        let path = format!("{}/messages", stream_path(stream));
        let (outcome, _) =
            with_retries(&targets, &http, &mut rng, Method::POST, &path, None, body).await;
        env.recorder.post(Post {
            client,
            seq,
            stream,
            client_msg_id: id,
            via_edge,
            outcome,
            end_ms: env.recorder.now_ms(),
        });
        seq += 1;
        tokio::time::sleep(Duration::from_millis(rng.range(5, 30))).await;
    }
}

/// Users joining and leaving streams (each posts `Streams/joined` / `Streams/left`).
pub async fn member(env: Env, seed: u64) {
    let http = api::client();
    let mut rng = Rng::new(seed);
    let targets: Vec<String> = env.nodes.iter().chain(&env.edges).cloned().collect();
    while !env.stopped() {
        let user = format!("u{}", rng.below(6));
        let stream = rng.below(env.streams);
        let join = rng.chance(60);
        let path = format!("{}/{}", stream_path(stream), if join { "join" } else { "leave" });
        let (outcome, _) =
            with_retries(&targets, &http, &mut rng, Method::POST, &path, Some(&user), json!({}))
                .await;
        env.recorder.membership(Membership { user, stream, join, outcome });
        tokio::time::sleep(Duration::from_millis(rng.range(100, 300))).await;
    }
}

/// A listener: listens on one stream through a random edge or node, and when the socket breaks
/// listens again at a random edge or node from the last ordinal it holds (as the SDK does).
pub async fn listener(env: Env, listener: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let stream = listener % env.streams;
    let mut since = 0u64;
    while !env.stopped() {
        let via = if !env.edges.is_empty() && rng.chance(50) {
            Via::Edge(rng.below(env.edges.len()))
        } else {
            Via::Node(rng.below(env.nodes.len()))
        };
        let mut session = ListenSession { listener, via, stream, since, events: Vec::new() };
        let _ = listen_once(&env, &mut session).await;
        for ev in &session.events {
            match ev {
                Event::Message { ordinal, .. } => since = since.max(*ordinal),
                // Told to refetch from `from`: the prefix before it is what we hold.
                Event::Resync { from } => since = from.saturating_sub(1),
            }
        }
        env.recorder.session(session);
        tokio::time::sleep(Duration::from_millis(rng.range(100, 400))).await;
    }
}

/// One session; returns when the socket breaks, goes quiet too long, or a resync arrives.
async fn listen_once(env: &Env, session: &mut ListenSession) -> anyhow::Result<()> {
    let url = env.url(session.via).replace("http://", "ws://") + "/v1/ws";
    let mut req = url.into_client_request()?;
    req.headers_mut().insert("Authorization", format!("Bearer {API_KEY}").parse()?);
    let (mut ws, _) =
        tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(req))
            .await??;
    let frame = json!({"id": 1, "op": "listen",
        "stream": {"publisherId": PUBLISHER, "name": stream_name(session.stream)},
        "since": session.since});
    ws.send(WsMessage::text(frame.to_string())).await?;
    loop {
        if env.stopped() {
            return Ok(());
        }
        // Posts flow all the time, so a long silence means this node (or the edge's node) is
        // stopped or cut off.
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next()).await?;
        let Some(msg) = msg else { return Ok(()) };
        let WsMessage::Text(text) = msg? else { continue };
        let v: Value = serde_json::from_str(&text)?;
        if v.get("re").is_some() {
            if v.get("error").is_some() {
                return Ok(());
            }
            continue;
        }
        match v["ev"].as_str() {
            Some("message") => {
                let m = &v["message"];
                session.events.push(Event::Message {
                    ordinal: m["ordinal"].as_u64().unwrap_or(0),
                    client_msg_id: m["clientMsgId"].as_str().map(str::to_owned),
                    kind: m["type"].as_str().unwrap_or("").to_owned(),
                });
            }
            Some("resync") => {
                session.events.push(Event::Resync { from: v["from"].as_u64().unwrap_or(0) });
                return Ok(());
            }
            _ => {}
        }
    }
}
