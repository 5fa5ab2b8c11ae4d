//! `chorus post` and `chorus tail`: thin commands over the client SDK (`chorus-client`).
//!
//! `post` uses an in-memory store: a one-shot command has no later run to hand a queue to,
//! and a file queue left behind would be sent by some unrelated later invocation. So it waits
//! (up to `--wait`) for the server's answer and fails when there is none; the SDK still
//! retries through reconnects and transient refusals within that time, with the same
//! `clientMsgId`, so a post is stored at most once.
//!
//! The SDK keeps reconnecting whatever the failure (an app's token provider may mend a 401);
//! a command cannot mend anything by waiting, so a refused upgrade (a bad token, a bad `--as`)
//! ends it at once with the server's error, and an unreachable server is said to be one.

use crate::say;
use std::time::Duration;

use anyhow::{Context, bail};
use chorus_client::{
    Client, ClientBuilder, ConnectFailure, Message, NewMessage, StreamId, SyncState,
};
use chorus_config::env;

use crate::cli::{ClientArgs, PostArgs, TailArgs};
use crate::secrets;

fn stream_id(path: &str) -> anyhow::Result<StreamId> {
    StreamId::parse_path(path).context("a stream is written publisherId/name")
}

/// `--token` (or `CHORUS_TOKEN`), else the dev API key of `--data`, else `CHORUS_API_KEY`.
fn token(c: &ClientArgs) -> anyhow::Result<String> {
    if let Some(token) = &c.token {
        return Ok(token.clone());
    }
    match secrets::load(&c.data) {
        Ok(dev) => Ok(dev.api_key),
        Err(dev) => std::env::var(env::API_KEY).map_err(|_| {
            anyhow::anyhow!(
                "no token: pass --token (a JWT, or the API key with --as USER), or set \
                 CHORUS_TOKEN or {}; and no dev secrets: {dev:#}",
                env::API_KEY
            )
        }),
    }
}

fn builder(c: &ClientArgs) -> anyhow::Result<ClientBuilder> {
    let mut builder = Client::builder(&c.url, token(c)?).in_memory_store();
    if let Some(user) = &c.as_user {
        builder = builder.as_user(user);
    }
    Ok(builder)
}

/// Resolves with the first refused upgrade; never when the server only cannot be reached.
async fn refusal(client: &Client) -> ConnectFailure {
    let mut failures = client.connect_failure();
    loop {
        if let Some(f) = failures.borrow_and_update().clone().filter(ConnectFailure::is_refusal) {
            return f;
        }
        if failures.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

pub async fn post(args: PostArgs) -> anyhow::Result<()> {
    let stream = stream_id(&args.stream)?;
    let client = builder(&args.client)?.build()?;
    let mut message = NewMessage::new(args.message_type, args.text);
    message.client_msg_id = args.client_msg_id;
    let mut handle = client.post(&stream, message).await?;
    let id = handle.get().client_msg_id().to_owned();
    let url = &args.client.url;
    let connected_once = || client.connection().borrow().epoch > 0;
    let settled = tokio::select! {
        settled = tokio::time::timeout(Duration::from_secs(args.wait), handle.settled()) => settled,
        refused = refusal(&client) => {
            if connected_once() {
                bail!("{refused}; the post may or may not be stored (retry with --client-msg-id {id})");
            }
            bail!("{refused}; nothing was sent");
        }
    };
    let Ok(settled) = settled else {
        if !connected_once() {
            let why = client.connect_failure().borrow().clone();
            let why = why.map(|f| format!(": {f}")).unwrap_or_default();
            bail!("could not connect to {url} within {}s{why}; nothing was sent", args.wait);
        }
        bail!(
            "no answer from {url} within {}s; the post may or may not be stored (retry with \
             --client-msg-id {id})",
            args.wait
        );
    };
    match settled.state {
        SyncState::Synced(message) => {
            say!("{}", serde_json::to_string(&message)?);
            Ok(())
        }
        SyncState::Error(error) => bail!("{error}"),
        SyncState::Syncing => bail!("the client stopped before the post settled"),
    }
}

pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let stream = stream_id(&args.stream)?;
    let client = builder(&args.client)?.build()?;
    let mut feed = client.listen(&stream, args.since);
    let mut failures = client.connect_failure();
    let mut said: Option<String> = None;
    loop {
        tokio::select! {
            next = feed.next() => match next {
                Some(m) => say!("{}", line(&m?)),
                None => return Ok(()),
            },
            changed = failures.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let failure = failures.borrow_and_update().clone();
                match failure {
                    Some(f) if f.is_refusal() => bail!("{f}"),
                    // Said once per distinct cause, on stderr: the tail goes on trying.
                    Some(f) if said.as_deref() != Some(f.message.as_str()) => {
                        eprintln!("cannot connect to {}: {f}; retrying", args.client.url);
                        said = Some(f.message);
                    }
                    Some(_) => {}
                    None => {
                        if said.take().is_some() {
                            eprintln!("connected to {}", args.client.url);
                        }
                    }
                }
            }
        }
    }
}

/// `#ordinal time by: content`; messages other than chat messages also show their type and
/// instructions (`Streams/joined` carries its news there, with no content).
fn line(m: &Message) -> String {
    let by = if m.by_user_id.is_empty() { "(app)" } else { m.by_user_id.as_str() };
    let time = m.sent_time.as_deref().unwrap_or("");
    if m.message_type == "Chat/message" {
        return format!("#{} {time} {by}: {}", m.ordinal, m.content);
    }
    let mut text = format!("#{} {time} {by} [{}]", m.ordinal, m.message_type);
    if !m.content.is_empty() {
        text.push_str(&format!(" {}", m.content));
    }
    if let Some(instructions) = &m.instructions {
        text.push_str(&format!(" {instructions}"));
    }
    text
}
