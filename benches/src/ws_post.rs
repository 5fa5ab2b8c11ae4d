//! One WebSocket client keeping a fixed number of posts in flight (round robin over streams of
//! publisher `bench`) until a measuring window ends; every reply is recorded in the window.
//!
//! The client is lean so that the server, not the load generator, sets the figures on a
//! machine they share: frames are built from pre-encoded parts, `ok` replies are recognised
//! without a JSON parse (error replies are parsed), and the posts that replace the replies
//! read from one socket read go out in one write, as a client library that buffers its writes
//! (NATS clients, browsers' `WebSocket.send` within one task) does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::net::lookup_host;

use crate::stats::Window;
use crate::ws_lite::{WsConn, number_after};

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
    let addr: SocketAddr =
        lookup_host(&addr).await?.next().with_context(|| format!("{addr} resolves to nothing"))?;
    let mut conn = WsConn::connect(None, addr, &format!("/v1/ws?token={token}")).await?;
    let frames = FrameParts::new(&streams, &body)?;
    let mut pending: HashMap<u64, Instant> = HashMap::with_capacity(depth);
    let mut next = 0u64;
    let mut cursor = first;
    let mut frame = Vec::new();
    let mut send = |conn: &mut WsConn, pending: &mut HashMap<u64, Instant>| {
        frames.render(&mut frame, next, cursor);
        conn.queue_text(&frame);
        pending.insert(next, Instant::now());
        next += 1;
        cursor += 1;
    };
    for _ in 0..depth {
        send(&mut conn, &mut pending);
    }
    conn.flush().await?;
    while !pending.is_empty() {
        let Some(text) = conn.next_text().await? else { bail!("socket closed") };
        let mut answered = on_reply(text, &mut pending, &window)?;
        while let Some(text) = conn.buffered_text()? {
            answered += on_reply(text, &mut pending, &window)?;
        }
        if Instant::now() < window.end {
            for _ in 0..answered {
                send(&mut conn, &mut pending);
            }
        }
        conn.flush().await?;
    }
    Ok(())
}

/// Records one reply; returns 1 when it answered a pending post.
fn on_reply(
    text: &[u8],
    pending: &mut HashMap<u64, Instant>,
    window: &Window,
) -> anyhow::Result<usize> {
    let now = Instant::now();
    // `{"re":N,"ok":…}` is how every success starts; anything else is parsed.
    if text.starts_with(br#"{"re":"#)
        && let Some(id) = number_after(text, br#"{"re":"#)
    {
        let digits = id.checked_ilog10().unwrap_or(0) as usize + 1;
        if text[6 + digits..].starts_with(br#","ok":"#) {
            let Some(sent) = pending.remove(&id) else { return Ok(0) };
            window.record(sent, now);
            return Ok(1);
        }
    }
    let v: Value = serde_json::from_slice(text)?;
    let Some(sent) = v["re"].as_u64().and_then(|id| pending.remove(&id)) else { return Ok(0) };
    if v.get("ok").is_some() {
        window.record(sent, now);
    } else {
        window.error_code(v["error"]["code"].as_str().unwrap_or("?"));
    }
    Ok(1)
}

/// A post frame in pre-encoded parts: `{"id":` id `,"op":"post","stream":…` name `…}`.
struct FrameParts {
    names: Vec<String>,
    tail: String,
}

impl FrameParts {
    fn new(streams: &[String], body: &str) -> anyhow::Result<FrameParts> {
        let names = streams
            .iter()
            .map(|s| {
                Ok(format!(
                    r#","op":"post","stream":{{"publisherId":"bench","name":{}}}"#,
                    serde_json::to_string(s)?
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let tail =
            format!(r#","type":"Chat/message","content":{}}}"#, serde_json::to_string(body)?);
        Ok(FrameParts { names, tail })
    }

    fn render(&self, out: &mut Vec<u8>, id: u64, cursor: usize) {
        out.clear();
        out.extend_from_slice(br#"{"id":"#);
        out.extend_from_slice(id.to_string().as_bytes());
        out.extend_from_slice(self.names[cursor % self.names.len()].as_bytes());
        out.extend_from_slice(self.tail.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_frame_is_the_post_it_stands_for() {
        let parts = FrameParts::new(&["a/\"b".to_owned(), "c".to_owned()], "x\"y").unwrap();
        let mut out = Vec::new();
        parts.render(&mut out, 17, 2);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 17, "op": "post",
                "stream": {"publisherId": "bench", "name": "a/\"b"},
                "type": "Chat/message", "content": "x\"y"})
        );
    }

    #[test]
    fn ok_replies_are_told_from_errors() {
        let window =
            Window::new(std::time::Duration::ZERO, std::time::Duration::from_secs(60)).unwrap();
        let mut pending = HashMap::from([(7, Instant::now()), (12, Instant::now())]);
        let ok = br#"{"re":12,"ok":{"ordinal":3}}"#;
        assert_eq!(on_reply(ok, &mut pending, &window).unwrap(), 1);
        assert_eq!(on_reply(ok, &mut pending, &window).unwrap(), 0, "answered once");
        let error = br#"{"error":{"code":"forbidden","message":"no"},"re":7}"#;
        assert_eq!(on_reply(error, &mut pending, &window).unwrap(), 1);
        assert!(pending.is_empty());
        assert_eq!(window.errors.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(window.acked(), 1);
        // Other shapes of an `ok` are still told apart by parsing.
        pending.insert(3, Instant::now());
        assert_eq!(on_reply(br#"{"ok":{},"re":3}"#, &mut pending, &window).unwrap(), 1);
        assert_eq!(window.acked(), 2);
        pending.insert(4, Instant::now());
        assert_eq!(on_reply(br#"{"re":"x","ok":{}}"#, &mut pending, &window).unwrap(), 0);
    }
}
