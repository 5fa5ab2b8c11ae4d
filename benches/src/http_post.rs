//! One HTTP client task keeping one post in flight (round robin over streams of publisher
//! `bench`) until a measuring window ends: `POST /v1/streams/{publisherId}/{name}/messages` on
//! a keep-alive connection from the shared pool, every answer recorded in the window.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::stats::Window;

/// Posts one at a time until the window ends.
pub async fn poster(
    client: reqwest::Client,
    addr: String,
    token: String,
    streams: Arc<Vec<String>>,
    first: usize,
    body: Arc<String>,
    window: Arc<Window>,
) -> anyhow::Result<()> {
    let urls: Vec<String> = streams
        .iter()
        .map(|s| format!("http://{addr}/v1/streams/bench/{}/messages", s.replace('/', "%2F")))
        .collect();
    let payload = json!({"type": "Chat/message", "content": body.as_str()}).to_string();
    let mut cursor = first;
    while Instant::now() < window.end {
        let sent = Instant::now();
        let answer = client
            .post(&urls[cursor % urls.len()])
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(payload.clone())
            .send()
            .await;
        cursor += 1;
        match answer {
            Ok(r) if r.status().is_success() => {
                // Read the body: the connection goes back to the pool once it is consumed.
                let ok = r.bytes().await.is_ok();
                if ok {
                    window.record(sent, Instant::now());
                } else {
                    window.error();
                }
            }
            Ok(r) => {
                let status = r.status().as_u16().to_string();
                let _ = r.bytes().await;
                window.error_code(&status);
            }
            Err(_) => window.error(),
        }
    }
    Ok(())
}
