//! `chorus post` and `chorus tail`: thin commands over the client SDK (`chorus-client`).
//!
//! `post` uses an in-memory store: a one-shot command has no later run to hand a queue to,
//! and a file queue left behind would be sent by some unrelated later invocation. So it waits
//! (up to `--wait`) for the server's answer and fails when there is none; the SDK still
//! retries through reconnects and transient refusals within that time, with the same
//! `clientMsgId`, so a post is stored at most once.

use std::time::Duration;

use anyhow::{Context, bail};
use chorus_client::{Client, ClientBuilder, NewMessage, StreamId, SyncState};

use crate::cli::{ClientArgs, PostArgs, TailArgs};
use crate::secrets;

fn stream_id(path: &str) -> anyhow::Result<StreamId> {
    StreamId::parse_path(path).context("a stream is written publisherId/name")
}

fn builder(c: &ClientArgs) -> anyhow::Result<ClientBuilder> {
    let token = match &c.token {
        Some(token) => token.clone(),
        None => secrets::load(&c.data)?.api_key,
    };
    let mut builder = Client::builder(&c.url, token).in_memory_store();
    if let Some(user) = &c.as_user {
        builder = builder.as_user(user);
    }
    Ok(builder)
}

pub async fn post(args: PostArgs) -> anyhow::Result<()> {
    let stream = stream_id(&args.stream)?;
    let client = builder(&args.client)?.build()?;
    let mut message = NewMessage::new(args.message_type, args.text);
    message.client_msg_id = args.client_msg_id;
    let mut handle = client.post(&stream, message).await?;
    let wait = Duration::from_secs(args.wait);
    let Ok(settled) = tokio::time::timeout(wait, handle.settled()).await else {
        bail!(
            "no answer from {} within {}s; the post may or may not be stored (retry with the same --client-msg-id)",
            args.client.url,
            args.wait
        );
    };
    match settled.state {
        SyncState::Synced(message) => {
            println!("{}", serde_json::to_string(&message)?);
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
    while let Some(next) = feed.next().await {
        let m = next?;
        println!(
            "#{} {} {}: {}",
            m.ordinal,
            m.sent_time.as_deref().unwrap_or(""),
            m.by_user_id,
            m.content
        );
    }
    Ok(())
}
