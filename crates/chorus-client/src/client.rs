//! [`Client`] and its builder.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::backoff::BackoffPolicy;
use crate::conflict::{ConflictResolver, TakeTheirs};
use crate::connection::{self, ConnectFailure, ConnectionState, Dialer, Routes};
use crate::error::ClientError;
use crate::feed::{MessageFeed, OrderedFeed};
use crate::live_messages::LiveMessages;
use crate::live_stream::LiveStream;
use crate::model::{NewMessage, Stream, StreamId};
use crate::outbox::{self, PostHandle};
use crate::shared::Shared;
use crate::store::Store;
use crate::token::{StaticToken, TokenProvider};
use crate::util::lock;

/// Requests waiting for the connection task; a full queue makes callers wait (back-pressure).
const REQUEST_QUEUE: usize = 256;
/// Messages per page of a live collection, by default.
const DEFAULT_PAGE_SIZE: u64 = 50;

/// Where the local store lives.
#[derive(Clone, Debug)]
enum StoreLocation {
    File(PathBuf),
    Memory,
}

/// Configures a [`Client`]. Defaults: in-memory store, backoff 1 s doubling to 8 s, conflicts
/// resolved by [`TakeTheirs`], pages of 50 messages.
pub struct ClientBuilder {
    url: String,
    tokens: Arc<dyn TokenProvider>,
    as_user: Option<String>,
    store: StoreLocation,
    backoff: BackoffPolicy,
    resolver: Arc<dyn ConflictResolver>,
    page_size: u64,
}

impl ClientBuilder {
    /// `url` is an edge's base URL (`http://127.0.0.1:8080`, or `ws://…`, `https://…`); the
    /// client connects to its `/v1/ws`.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            tokens: Arc::new(StaticToken(token.into())),
            as_user: None,
            store: StoreLocation::Memory,
            backoff: BackoffPolicy::default(),
            resolver: Arc::new(TakeTheirs),
            page_size: DEFAULT_PAGE_SIZE,
        }
    }

    /// Asks `provider` for the token before every connection attempt (the refresh hook).
    pub fn token_provider(mut self, provider: impl TokenProvider) -> ClientBuilder {
        self.tokens = Arc::new(provider);
        self
    }

    /// With the API key as token: act as this user (`X-Chorus-As-User`).
    pub fn as_user(mut self, user_id: impl Into<String>) -> ClientBuilder {
        self.as_user = Some(user_id.into());
        self
    }

    /// Keeps the offline queue and the cache in this file (created when missing), so they
    /// survive restarts. One client per file: a second open fails while the first is alive.
    pub fn store_path(mut self, path: impl Into<PathBuf>) -> ClientBuilder {
        self.store = StoreLocation::File(path.into());
        self
    }

    /// Keeps queue and cache in memory: queued posts die with the process.
    pub fn in_memory_store(mut self) -> ClientBuilder {
        self.store = StoreLocation::Memory;
        self
    }

    /// Reconnect and retry delays (tests shorten them).
    pub fn backoff(mut self, policy: BackoffPolicy) -> ClientBuilder {
        self.backoff = policy;
        self
    }

    /// Decides conflicting field updates; see [`LiveStream::update`].
    pub fn on_conflict(mut self, resolver: impl ConflictResolver) -> ClientBuilder {
        self.resolver = Arc::new(resolver);
        self
    }

    /// Messages per page of [`LiveMessages`] (1–1000).
    pub fn page_size(mut self, messages: u64) -> ClientBuilder {
        self.page_size = messages.clamp(1, 1000);
        self
    }

    /// Opens the store and starts the connection and the queue sender. Returns at once,
    /// connected or not. Must run inside a tokio runtime.
    pub fn build(self) -> Result<Client, ClientError> {
        let ws_url = websocket_url(&self.url);
        // Reject a URL that can never work now, not as an endless reconnect loop.
        ws_url
            .as_str()
            .into_client_request()
            .map_err(|error| ClientError::InvalidUrl(Arc::new(error)))?;
        let store = match &self.store {
            StoreLocation::File(path) => Store::open(path)?,
            StoreLocation::Memory => Store::in_memory()?,
        };
        let queued = store.queued()?;
        let (requests, request_queue) = mpsc::channel(REQUEST_QUEUE);
        let (link_tx, link) = watch::channel(ConnectionState::default());
        let (failure_tx, failure) = watch::channel(None);
        let routes = Arc::new(Routes::default());
        let shared = Arc::new(Shared {
            store,
            requests,
            link,
            failure,
            routes: Arc::clone(&routes),
            feeds: Mutex::new(HashMap::new()),
            posts: Mutex::new(HashMap::new()),
            posts_changed: watch::Sender::new(0),
            outbox_wake: Notify::new(),
            outbox_gate: tokio::sync::Mutex::new(()),
            backoff: self.backoff,
            resolver: self.resolver,
            page_size: self.page_size,
            tasks: Mutex::new(JoinSet::new()),
        });
        for post in &queued {
            outbox::register(&shared, post);
        }
        let dialer =
            Dialer { ws_url, tokens: self.tokens, as_user: self.as_user, backoff: self.backoff };
        shared.spawn(connection::run(dialer, request_queue, link_tx, failure_tx, routes));
        shared.spawn(outbox::run(Arc::clone(&shared)));
        Ok(Client { inner: Arc::new(ClientInner { shared }) })
    }
}

/// `http://h:p` → `ws://h:p/v1/ws`; a URL already ending in `/v1/ws` is kept.
fn websocket_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let scheme_swapped = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    if scheme_swapped.ends_with("/v1/ws") {
        scheme_swapped
    } else {
        format!("{scheme_swapped}/v1/ws")
    }
}

/// Stops the background tasks when the last [`Client`] clone goes.
struct ClientInner {
    shared: Arc<Shared>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        lock(&self.shared.tasks).abort_all();
    }
}

/// A Chorus client: one WebSocket, a local store, live objects. Cheap to clone; the
/// connection and the queue sender stop when the last clone is dropped (queued posts stay
/// in a file store for the next run).
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl Client {
    /// Shorthand for [`ClientBuilder::new`].
    pub fn builder(url: impl Into<String>, token: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url, token)
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The connection state; `changed().await` to follow it.
    pub fn connection(&self) -> watch::Receiver<ConnectionState> {
        self.shared().link.clone()
    }

    /// Why the last connection attempt failed (`None` once connected); `changed().await` to
    /// follow it. [`ConnectFailure::is_refusal`] tells a refused token or user id apart from a
    /// server that is not there yet.
    pub fn connect_failure(&self) -> watch::Receiver<Option<ConnectFailure>> {
        self.shared().failure.clone()
    }

    /// A live handle on a stream's fields, returned at once (see [`LiveStream`]).
    pub fn stream(&self, id: &StreamId) -> LiveStream {
        LiveStream::start(self.shared(), id.clone())
    }

    /// A live collection of a stream's messages, returned at once (see [`LiveMessages`]).
    pub fn messages(&self, id: &StreamId) -> LiveMessages {
        LiveMessages::start(self.shared(), id.clone())
    }

    /// Every message after ordinal `since` (after the current last one when `None`), in
    /// order, each once, across reconnects.
    pub fn listen(&self, id: &StreamId, since: Option<u64>) -> MessageFeed {
        MessageFeed::new(OrderedFeed::new(self.shared(), id, since))
    }

    /// Posts through the offline queue. Returns once the message is durably queued (a local
    /// write, no network): the handle is [`crate::SyncState::Syncing`] and becomes
    /// `Synced` with the server's ordinal, or `Error` with its code.
    pub async fn post(
        &self,
        id: &StreamId,
        message: NewMessage,
    ) -> Result<PostHandle, ClientError> {
        outbox::post(self.shared(), id.clone(), message).await
    }

    /// Every post still in the queue (syncing or failed), oldest first; after a restart
    /// these are the posts the previous run left.
    pub fn queued_posts(&self) -> Vec<PostHandle> {
        outbox::handles(self.shared())
    }

    /// Drops a post from the queue (a failed one the user dismissed). A post already sent may
    /// still be stored by the server.
    pub async fn discard_post(&self, local_id: u64) -> Result<(), ClientError> {
        outbox::discard(self.shared(), local_id).await
    }

    /// Creates a stream (`fields` as the HTTP body of `POST /v1/streams`). Waits for the
    /// connection; not queued offline, since creation is not idempotent (a retry after a lost
    /// reply answers `already_exists`).
    pub async fn create_stream(&self, fields: Value) -> Result<Stream, ClientError> {
        let body = self.request("create", None, fields).await?;
        serde_json::from_value(body).map_err(|error| ClientError::Protocol(Arc::new(error)))
    }

    /// Any WebSocket op (`join`, `participants`, `setAccess`, …) with its arguments; the `ok`
    /// body is returned. Waits for the connection; retries only transient refusals, so use
    /// it for ops that are safe to repeat.
    pub async fn request(
        &self,
        op: &str,
        stream: Option<&StreamId>,
        args: Value,
    ) -> Result<Value, ClientError> {
        self.shared().request_when_connected(op, stream, args).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_urls() {
        assert_eq!(websocket_url("http://127.0.0.1:8080"), "ws://127.0.0.1:8080/v1/ws");
        assert_eq!(websocket_url("https://chat.example/"), "wss://chat.example/v1/ws");
        assert_eq!(websocket_url("ws://h:1/v1/ws"), "ws://h:1/v1/ws");
    }
}
