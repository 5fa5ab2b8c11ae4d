//! The client HTTP API as the workloads use it: one call, classified the way the protocol
//! says clients must treat it (ok / retry / final error / outcome unknown).

use std::time::Duration;

use serde_json::Value;

use crate::cluster::API_KEY;

pub const PUBLISHER: &str = "alice";

pub fn stream_name(s: usize) -> String {
    format!("Chat/chaos/{s}")
}

/// Percent-encodes one path segment.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn stream_path(s: usize) -> String {
    format!("/v1/streams/{PUBLISHER}/{}", enc(&stream_name(s)))
}

/// The ordinal of a post's answer (the message itself, or wrapped in `message`).
pub fn ordinal(v: &Value) -> u64 {
    v["message"]["ordinal"].as_u64().or(v["ordinal"].as_u64()).unwrap_or(0)
}

pub enum Reply {
    Ok(Value),
    /// Safe to retry; `maybe_done` when the request may have taken effect anyway.
    Retry {
        maybe_done: bool,
    },
    Final(String),
}

pub fn client() -> reqwest::Client {
    // Bounded: a paused node must not hold a client forever; it moves to another node.
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(1))
        .build()
        .unwrap_or_default()
}

pub async fn call(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    user: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut req = http.request(method, format!("{base}{path}")).bearer_auth(API_KEY);
    if let Some(u) = user {
        req = req.header("X-Chorus-As-User", u);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        // Sent or not, we cannot tell: connection refused is the only sure "not sent".
        Err(e) => return Reply::Retry { maybe_done: !e.is_connect() },
    };
    let status = resp.status().as_u16();
    let v: Value = match resp.json().await {
        Ok(v) => v,
        Err(_) => return Reply::Retry { maybe_done: true },
    };
    if (200..300).contains(&status) {
        return Reply::Ok(v);
    }
    let code = v["error"]["code"].as_str().unwrap_or("").to_owned();
    match code.as_str() {
        "timeout" => Reply::Retry { maybe_done: true },
        "not_leader" | "unavailable" | "rate_limited" => Reply::Retry { maybe_done: false },
        _ if status >= 500 => Reply::Retry { maybe_done: true },
        _ => Reply::Final(format!("{status} {v}")),
    }
}
