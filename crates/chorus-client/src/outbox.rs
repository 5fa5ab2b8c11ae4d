//! The offline queue: optimistic local messages, sent in order when connected, reconciled
//! with the server's ordinal.
//!
//! `post()` writes the message to the store (fsynced) with a fresh `clientMsgId` and returns
//! a [`PostHandle`] in state [`SyncState::Syncing`]. One sender task sends queued posts one at
//! a time by ascending seq, which keeps each stream's order across retries (a resent post is a
//! new request, which would land behind any sent after it). An ack makes it [`SyncState::Synced`]; a transient
//! failure (disconnect, `unavailable`, `timeout`, …) retries the same frame, same
//! `clientMsgId`, so the server stores it once; any other refusal is final:
//! [`SyncState::Error`], kept in the store, never resent.

use std::sync::Arc;

use chorus_types::ApiError;
use serde_json::json;
use tokio::sync::watch;

use crate::error::ClientError;
use crate::model::{Message, NewMessage, StreamId};
use crate::shared::Shared;
use crate::store::QueuedPost;
use crate::util::lock;

/// Where a local message stands (Amity's `syncState`).
#[derive(Clone, Debug, PartialEq)]
pub enum SyncState {
    /// Queued or in flight.
    Syncing,
    /// Stored by the server, as this message.
    Synced(Message),
    /// Refused for good (`forbidden`, `too_large`, `not_found`, …); not retried.
    Error(ApiError),
}

/// A message this client posted, as the app shows it before and after the server has it.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalMessage {
    /// The queue position; unique for the life of the store.
    pub local_id: u64,
    pub stream: StreamId,
    /// What was posted, `client_msg_id` included.
    pub message: NewMessage,
    pub state: SyncState,
}

impl LocalMessage {
    fn queued(post: &QueuedPost) -> LocalMessage {
        let state = match &post.failed {
            Some(error) => SyncState::Error(error.clone()),
            None => SyncState::Syncing,
        };
        LocalMessage {
            local_id: post.seq,
            stream: post.stream.clone(),
            message: post.message.clone(),
            state,
        }
    }

    /// The `clientMsgId` every attempt carries.
    pub fn client_msg_id(&self) -> &str {
        self.message.client_msg_id.as_deref().unwrap_or_default()
    }

    /// The server's ordinal, once synced.
    pub fn ordinal(&self) -> Option<u64> {
        match &self.state {
            SyncState::Synced(message) => Some(message.ordinal),
            _ => None,
        }
    }
}

/// Follows one queued post.
#[derive(Clone, Debug)]
pub struct PostHandle {
    state: watch::Receiver<LocalMessage>,
}

impl PostHandle {
    /// The message as it stands now.
    pub fn get(&self) -> LocalMessage {
        self.state.borrow().clone()
    }

    /// Waits until the post is synced or failed for good. Waits as long as the server is
    /// unreachable: wrap it in a timeout where that matters.
    pub async fn settled(&mut self) -> LocalMessage {
        if let Ok(local) = self.state.wait_for(|local| local.state != SyncState::Syncing).await {
            return local.clone();
        }
        // The sender is gone only after publishing a final state, or with the client.
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn watch(&self) -> watch::Receiver<LocalMessage> {
        self.state.clone()
    }
}

/// Queues a post durably and hands it to the sender.
pub(crate) async fn post(
    shared: &Arc<Shared>,
    stream: StreamId,
    mut message: NewMessage,
) -> Result<PostHandle, ClientError> {
    message.client_msg_id.get_or_insert_with(|| ulid::Ulid::new().to_string());
    // Held until the post is registered, so the sender never settles a post whose handle
    // does not exist yet (that handle would then wait forever).
    let _gate = shared.outbox_gate.lock().await;
    let queued = shared.store.run(move |store| store.enqueue(stream, message)).await?;
    let handle = register(shared, &queued);
    shared.outbox_wake.notify_one();
    Ok(handle)
}

/// Registers a queued post's state (new, or found in the store at start).
pub(crate) fn register(shared: &Shared, queued: &QueuedPost) -> PostHandle {
    let (state, receiver) = watch::channel(LocalMessage::queued(queued));
    lock(&shared.posts).insert(queued.seq, state);
    shared.posts_changed();
    PostHandle { state: receiver }
}

/// Handles for every post still in the queue, failed ones included.
pub(crate) fn handles(shared: &Shared) -> Vec<PostHandle> {
    let posts = lock(&shared.posts);
    let mut handles: Vec<PostHandle> =
        posts.values().map(|state| PostHandle { state: state.subscribe() }).collect();
    handles.sort_by_key(|handle| handle.get().local_id);
    handles
}

/// Unsettled and failed local messages of one stream, in queue order.
pub(crate) fn local_messages(shared: &Shared, stream: &StreamId) -> Vec<LocalMessage> {
    let posts = lock(&shared.posts);
    let mut locals: Vec<LocalMessage> = posts
        .values()
        .map(|state| state.borrow().clone())
        .filter(|local| &local.stream == stream && local.ordinal().is_none())
        .collect();
    locals.sort_by_key(|local| local.local_id);
    locals
}

/// Removes a post from the queue (typically a failed one the user dismissed).
pub(crate) async fn discard(shared: &Shared, local_id: u64) -> Result<(), ClientError> {
    shared.store.run(move |store| store.discard(local_id)).await?;
    lock(&shared.posts).remove(&local_id);
    shared.posts_changed();
    Ok(())
}

/// The sender task: runs until the client is dropped.
pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        let next = {
            let _gate = shared.outbox_gate.lock().await;
            shared.store.run(|store| store.next_unsent()).await
        };
        let post = match next {
            Ok(Some(post)) => post,
            Ok(None) => {
                // `notify_one` keeps a permit when nobody waits, so a post queued between
                // the read above and this wait is not missed.
                shared.outbox_wake.notified().await;
                continue;
            }
            Err(ClientError::Closed) => return,
            Err(error) => {
                tracing::error!(%error, "reading the offline queue failed; retrying");
                tokio::time::sleep(shared.backoff.max).await;
                continue;
            }
        };
        if !send(&shared, post).await {
            return;
        }
    }
}

/// Sends one post until it settles; `false` when the client is gone.
async fn send(shared: &Shared, post: QueuedPost) -> bool {
    let mut args = json!({
        "type": post.message.message_type,
        "content": post.message.content,
        "clientMsgId": post.message.client_msg_id,
    });
    if let Some(instructions) = &post.message.instructions {
        args["instructions"] = instructions.clone();
    }
    let outcome = shared.request_when_connected("post", Some(&post.stream), args).await;
    let settled = match outcome {
        Ok(body) => match serde_json::from_value::<Message>(body) {
            Ok(message) => synced(shared, post.seq, message).await,
            // Stored by the server but unreadable here: resending would get the same answer.
            Err(error) => {
                let error = ApiError::internal(format!("unreadable ack: {error}"));
                failed(shared, post.seq, error).await
            }
        },
        Err(ClientError::Server(refusal)) => failed(shared, post.seq, refusal.error).await,
        Err(ClientError::Protocol(error)) => {
            failed(shared, post.seq, ApiError::internal(format!("unreadable ack: {error}"))).await
        }
        Err(ClientError::Closed) => return false,
        Err(error) => Err(error),
    };
    if let Err(error) = settled {
        tracing::error!(%error, seq = post.seq, "recording a settled post failed");
        if let ClientError::Closed = error {
            return false;
        }
        // The store could not record it; the post will be sent again (same clientMsgId,
        // so the server answers with the original message).
        tokio::time::sleep(shared.backoff.max).await;
    }
    true
}

async fn synced(shared: &Shared, seq: u64, message: Message) -> Result<(), ClientError> {
    let stored = message.clone();
    shared.store.run(move |store| store.settle_synced(seq, &stored)).await?;
    if let Some(state) = lock(&shared.posts).remove(&seq) {
        state.send_modify(|local| local.state = SyncState::Synced(message));
    }
    shared.posts_changed();
    Ok(())
}

async fn failed(shared: &Shared, seq: u64, error: ApiError) -> Result<(), ClientError> {
    tracing::debug!(seq, code = %error.code, "post refused for good");
    let stored = error.clone();
    shared.store.run(move |store| store.settle_failed(seq, &stored)).await?;
    if let Some(state) = lock(&shared.posts).get(&seq) {
        state.send_modify(|local| local.state = SyncState::Error(error));
    }
    shared.posts_changed();
    Ok(())
}
