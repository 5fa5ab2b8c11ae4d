//! One WebSocket client keeping a fixed number of posts in flight (round robin over streams of
//! publisher `bench`) until a measuring window ends; every reply is recorded in the window.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::stats::Window;

/// One WebSocket keeping `depth` posts in flight until the window ends.
pub async fn connection(
    addr: String,
    token: String,
    streams: Arc<Vec<String>>,
    first: usize,
    depth: usize,
    body: Arc<String>,
    window: Arc<Window>,
) -> anyhow::Result<()> {
    let mut req = format!("ws://{addr}/v1/ws").into_client_request()?;
    req.headers_mut().insert("Authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    let (mut tx, mut rx) = ws.split();
    let mut pending: HashMap<u64, Instant> = HashMap::new();
    let mut next = 0u64;
    let mut cursor = first;
    let frame = |id: u64, stream: &str| {
        json!({"id": id, "op": "post", "stream": {"publisherId": "bench", "name": stream},
               "type": "Chat/message", "content": body.as_str()})
        .to_string()
    };
    for _ in 0..depth {
        tx.send(Message::text(frame(next, &streams[cursor % streams.len()]))).await?;
        pending.insert(next, Instant::now());
        next += 1;
        cursor += 1;
    }
    while !pending.is_empty() {
        let Some(msg) = rx.next().await else { bail!("socket closed") };
        let Message::Text(text) = msg? else { continue };
        let v: Value = serde_json::from_str(&text)?;
        let Some(id) = v["re"].as_u64() else { continue };
        let Some(sent) = pending.remove(&id) else { continue };
        let now = Instant::now();
        if v.get("ok").is_some() {
            window.record(sent, now);
        } else {
            window.error_code(v["error"]["code"].as_str().unwrap_or("?"));
        }
        if now < window.end {
            tx.send(Message::text(frame(next, &streams[cursor % streams.len()]))).await?;
            pending.insert(next, Instant::now());
            next += 1;
            cursor += 1;
        }
    }
    Ok(())
}
