//! What the client's tasks and live objects share: the request path, the link state, the
//! store, and the registries of feeds and queued posts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use crate::backoff::{Backoff, BackoffPolicy};
use crate::conflict::ConflictResolver;
use crate::connection::{ConnectFailure, ConnectionState, Outgoing, Routes};
use crate::error::ClientError;
use crate::feed::Subscriber;
use crate::model::{Message, StreamId};
use crate::outbox::LocalMessage;
use crate::store::Store;
use crate::util::lock;

/// The most messages one history request asks for (the server's cap).
const HISTORY_PAGE: u64 = 1000;

pub(crate) struct Shared {
    pub(crate) store: Store,
    /// To the connection task.
    pub(crate) requests: mpsc::Sender<Outgoing>,
    pub(crate) link: watch::Receiver<ConnectionState>,
    pub(crate) failure: watch::Receiver<Option<ConnectFailure>>,
    pub(crate) routes: Arc<Routes>,
    /// One feed (one server-side listen) per stream; the value adds a subscriber to it.
    pub(crate) feeds: Mutex<HashMap<StreamId, mpsc::UnboundedSender<Subscriber>>>,
    /// Queued posts by seq: the state each [`crate::PostHandle`] watches. Synced posts leave.
    pub(crate) posts: Mutex<HashMap<u64, watch::Sender<LocalMessage>>>,
    /// Bumped whenever a queued post is added or changes state (live collections show them).
    pub(crate) posts_changed: watch::Sender<u64>,
    /// Wakes the outbox sender when a post is queued.
    pub(crate) outbox_wake: Notify,
    /// Orders "queue and register a post" before the sender reads the queue (an async lock:
    /// it is held across the store write).
    pub(crate) outbox_gate: tokio::sync::Mutex<()>,
    pub(crate) backoff: BackoffPolicy,
    pub(crate) resolver: Arc<dyn ConflictResolver>,
    /// Messages per page of a live collection.
    pub(crate) page_size: u64,
    /// Tasks without a live object to own them (feeds, the outbox, the connection); aborted
    /// when the last [`crate::Client`] is dropped.
    pub(crate) tasks: Mutex<JoinSet<()>>,
}

impl Shared {
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = lock(&self.tasks);
        // Reap finished tasks so the set does not grow with every feed ever started.
        while let Some(joined) = tasks.try_join_next() {
            if let Err(error) = joined
                && error.is_panic()
            {
                tracing::error!(%error, "sdk task panicked");
            }
        }
        tasks.spawn(task);
    }

    /// One attempt: `Disconnected` at once when the link is down.
    pub(crate) async fn request(
        &self,
        op: &str,
        stream: Option<&StreamId>,
        args: Value,
    ) -> Result<Value, ClientError> {
        let mut frame = match args {
            Value::Object(fields) => fields,
            _ => Map::new(),
        };
        frame.insert("op".into(), Value::from(op));
        if let Some(stream) = stream {
            frame.insert("stream".into(), json!(stream));
        }
        let (reply, outcome) = tokio::sync::oneshot::channel();
        self.requests.send(Outgoing { frame, reply }).await.map_err(|_| ClientError::Closed)?;
        outcome.await.map_err(|_| ClientError::Closed)?
    }

    /// Waits for the link, sends, and retries through disconnects and transient refusals
    /// (after the server's `retryAfterMs`, else the backoff). Only for requests that are safe
    /// to repeat: reads, posts with a `clientMsgId`, preconditioned updates.
    pub(crate) async fn request_when_connected(
        &self,
        op: &str,
        stream: Option<&StreamId>,
        args: Value,
    ) -> Result<Value, ClientError> {
        let mut backoff = Backoff::new(self.backoff);
        loop {
            let epoch = self.wait_connected(0).await?;
            match self.request(op, stream, args.clone()).await {
                Err(ClientError::Disconnected) => {
                    self.wait_connected(epoch).await?;
                }
                Err(ClientError::Server(error)) if error.is_transient() => {
                    let delay = match error.error.retry_after_ms {
                        Some(ms) => std::time::Duration::from_millis(ms),
                        None => backoff.next_delay(),
                    };
                    tokio::time::sleep(delay).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// Waits until connected in an epoch after `after`; returns that epoch.
    pub(crate) async fn wait_connected(&self, after: u64) -> Result<u64, ClientError> {
        let mut link = self.link.clone();
        let state = link
            .wait_for(|state| state.connected && state.epoch > after)
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(state.epoch)
    }

    /// Messages `from..=to` of a stream, oldest first, over as many requests as needed.
    pub(crate) async fn history(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
    ) -> Result<Vec<Message>, ClientError> {
        let mut messages = Vec::new();
        let mut next = from;
        while next <= to {
            let args = json!({"min": next, "max": to, "limit": HISTORY_PAGE, "order": "asc"});
            let page =
                parse_messages(self.request_when_connected("messages", Some(stream), args).await?)?;
            let Some(last) = page.last().map(|message| message.ordinal) else {
                break;
            };
            messages.extend(page);
            next = last + 1;
        }
        Ok(messages)
    }

    /// The page of `limit` messages ending at `max` (the newest when `None`), oldest first.
    pub(crate) async fn page_before(
        &self,
        stream: &StreamId,
        max: Option<u64>,
        limit: u64,
    ) -> Result<Vec<Message>, ClientError> {
        let mut args = json!({"order": "desc", "limit": limit});
        if let Some(max) = max {
            args["max"] = json!(max);
        }
        let mut page =
            parse_messages(self.request_when_connected("messages", Some(stream), args).await?)?;
        page.reverse();
        Ok(page)
    }

    /// Caches messages; a failure costs a refetch later, so it is logged, not returned.
    pub(crate) async fn cache_messages(&self, messages: Vec<Message>) {
        if let Err(error) = self.store.run(move |store| store.put_messages(&messages)).await {
            tracing::warn!(%error, "caching messages failed");
        }
    }

    /// Tells every live collection that the queued posts changed.
    pub(crate) fn posts_changed(&self) {
        self.posts_changed.send_modify(|version| *version += 1);
    }
}

/// `{"messages": […]}` → messages.
pub(crate) fn parse_messages(mut body: Value) -> Result<Vec<Message>, ClientError> {
    serde_json::from_value(body["messages"].take())
        .map_err(|error| ClientError::Protocol(Arc::new(error)))
}
