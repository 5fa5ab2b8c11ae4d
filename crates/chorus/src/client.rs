//! `chorus post` and `chorus tail`: small clients over the public HTTP and WebSocket API.

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::cli::{ClientArgs, PostArgs, TailArgs};
use crate::secrets;

/// `alice/Chat/room/1` → (`alice`, `Chat/room/1`); `~` is the app publisher `""`.
fn split_stream(s: &str) -> anyhow::Result<(String, String)> {
    let (p, n) = s.split_once('/').context("a stream is written publisherId/name")?;
    if n.is_empty() {
        bail!("a stream is written publisherId/name");
    }
    let p = if p == "~" { "" } else { p };
    Ok((p.to_owned(), n.to_owned()))
}

fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn credentials(c: &ClientArgs) -> anyhow::Result<(String, Option<String>)> {
    match &c.token {
        Some(t) => Ok((t.clone(), c.as_user.clone())),
        None => Ok((secrets::load(&c.data)?.api_key, c.as_user.clone())),
    }
}

pub async fn post(args: PostArgs) -> anyhow::Result<()> {
    let (publisher, name) = split_stream(&args.stream)?;
    let (token, as_user) = credentials(&args.client)?;
    let p = if publisher.is_empty() { "~".to_owned() } else { encode_segment(&publisher) };
    let url = format!("{}/v1/streams/{p}/{}/messages", args.client.url, encode_segment(&name));
    let mut body = json!({"type": args.message_type, "content": args.text});
    if let Some(id) = args.client_msg_id {
        body["clientMsgId"] = json!(id);
    }
    let mut req = reqwest::Client::new().post(&url).bearer_auth(token).json(&body);
    if let Some(u) = as_user {
        req = req.header("X-Chorus-As-User", u);
    }
    let resp = req.send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{status}: {body}");
    }
    println!("{body}");
    Ok(())
}

pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let (publisher, name) = split_stream(&args.stream)?;
    let (token, as_user) = credentials(&args.client)?;
    let ws_url = format!("{}/v1/ws", args.client.url.replacen("http", "ws", 1));
    let mut request = ws_url.as_str().into_client_request()?;
    request.headers_mut().insert("Authorization", format!("Bearer {token}").parse()?);
    if let Some(u) = as_user {
        request.headers_mut().insert("X-Chorus-As-User", u.parse()?);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.context("connecting")?;
    let mut listen =
        json!({"id": 1, "op": "listen", "stream": {"publisherId": publisher, "name": name}});
    if let Some(since) = args.since {
        listen["since"] = json!(since);
    }
    ws.send(Message::text(listen.to_string())).await?;
    while let Some(frame) = ws.next().await {
        let text = match frame? {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        let v: Value = serde_json::from_str(&text)?;
        if let Some(e) = v.get("error") {
            bail!("{e}");
        }
        if v.get("ev") == Some(&json!("message")) {
            let m = &v["message"];
            println!(
                "#{} {} {}: {}",
                m["ordinal"],
                m["sentTime"].as_str().unwrap_or(""),
                m["byUserId"].as_str().unwrap_or(""),
                m["content"].as_str().unwrap_or("")
            );
        } else if v.get("ev") == Some(&json!("resync")) {
            eprintln!("fell behind; resync from {}", v["from"]);
            break;
        }
    }
    Ok(())
}
