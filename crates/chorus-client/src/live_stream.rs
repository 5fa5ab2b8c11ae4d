//! [`LiveStream`]: a stream's fields, cache-then-network, kept current, with optimistic
//! updates that hand conflicts to the app.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::conflict::{Conflict, Resolution};
use crate::error::ClientError;
use crate::feed::{FeedEvent, subscribe};
use crate::live::{LoadState, Origin, Snapshot};
use crate::model::{Stream, StreamId, StreamUpdate};
use crate::shared::Shared;
use crate::util::TaskGuard;

/// How many times one update goes back to the resolver before giving up; each round means
/// someone else changed the stream again in between.
const MAX_CONFLICT_ROUNDS: usize = 5;

/// What a live stream holds.
pub type StreamSnapshot = Snapshot<Option<Stream>>;

/// What became of an update.
#[derive(Clone, Debug, PartialEq)]
pub enum UpdateOutcome {
    /// The server applied the changes (possibly after the resolver kept or merged them).
    Applied(Stream),
    /// The resolver took theirs; the changes were dropped.
    Discarded(Stream),
}

/// A stream's fields, live. Returned at once by [`crate::Client::stream`]:
///
/// 1. the cached value, if this store has one ([`Origin::Cache`], [`LoadState::Loading`]);
/// 2. the server's, once connected ([`LoadState::Synced`], or [`LoadState::Error`] with the
///    code, e.g. `not_found`);
/// 3. refreshed when the stream changes (a `Streams/*` message: changed, closed, joined, …),
///    on every reconnect, and by the app's own [`LiveStream::update`].
///
/// `messageCount` follows new messages when the caller may listen (read level `messages`);
/// otherwise the value is refreshed on reconnects only. Dropping the handle stops it.
pub struct LiveStream {
    id: StreamId,
    shared: Arc<Shared>,
    state: Arc<watch::Sender<StreamSnapshot>>,
    _task: TaskGuard,
}

impl LiveStream {
    pub(crate) fn start(shared: &Arc<Shared>, id: StreamId) -> LiveStream {
        let state = Arc::new(watch::Sender::new(StreamSnapshot::default()));
        let task = TaskGuard::spawn(run(Arc::clone(shared), id.clone(), Arc::clone(&state)));
        LiveStream { id, shared: Arc::clone(shared), state, _task: task }
    }

    pub fn id(&self) -> &StreamId {
        &self.id
    }

    /// The state now.
    pub fn get(&self) -> StreamSnapshot {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change (`changed().await`, `wait_for(…)`).
    pub fn watch(&self) -> watch::Receiver<StreamSnapshot> {
        self.state.subscribe()
    }

    /// Waits until `ready` holds for the state, and returns that state.
    pub async fn wait_for(&self, ready: impl FnMut(&StreamSnapshot) -> bool) -> StreamSnapshot {
        let mut receiver = self.state.subscribe();
        match receiver.wait_for(ready).await {
            Ok(state) => state.clone(),
            Err(_) => self.get(),
        }
    }

    /// Changes fields: applied to the local value at once ([`Origin::Local`]), then sent with
    /// `ifMessageCount` = the `messageCount` they were based on. When the stream moved on,
    /// the client's [`crate::ConflictResolver`] decides (keep mine, take theirs, merge)
    /// instead of the change overwriting what it never saw. Waits for a connection; on a
    /// final refusal the local value goes back to the server's and the error is returned.
    pub async fn update(&self, changes: StreamUpdate) -> Result<UpdateOutcome, ClientError> {
        let Some(base) = self.state.borrow().value.clone() else {
            return Err(ClientError::NotLoaded);
        };
        let Some(mut based_on) = base.message_count else {
            return Err(ClientError::NotLoaded);
        };
        let mut changes = changes;
        let mut server_value = base.clone();
        self.show_local(&server_value, &changes);
        let mut last_conflict = None;
        for _ in 0..MAX_CONFLICT_ROUNDS {
            let mut args = serde_json::to_value(&changes)
                .map_err(|error| ClientError::Protocol(Arc::new(error)))?;
            args["ifMessageCount"] = json!(based_on);
            let outcome = self.shared.request_when_connected("update", Some(&self.id), args).await;
            let refusal = match outcome {
                Ok(body) => {
                    let stream = parse_stream(body)?;
                    self.show_server(stream.clone()).await;
                    return Ok(UpdateOutcome::Applied(stream));
                }
                Err(ClientError::Server(refusal)) => refusal,
                Err(error) => {
                    self.show_server(server_value).await;
                    return Err(error);
                }
            };
            let theirs = match (&refusal.stream, refusal.code()) {
                (Some(theirs), chorus_types::ErrorCode::Conflict) => (**theirs).clone(),
                _ => {
                    self.show_server(server_value).await;
                    return Err(ClientError::Server(refusal));
                }
            };
            let Some(their_count) = theirs.message_count else {
                self.show_server(theirs).await;
                return Err(ClientError::Server(refusal));
            };
            let conflict = Conflict {
                stream: self.id.clone(),
                mine: changes.clone(),
                base: base.clone(),
                theirs,
            };
            match self.shared.resolver.resolve(&conflict) {
                Resolution::TakeTheirs => {
                    self.show_server(conflict.theirs.clone()).await;
                    return Ok(UpdateOutcome::Discarded(conflict.theirs));
                }
                Resolution::KeepMine => {}
                Resolution::Merge(merged) => changes = merged,
            }
            based_on = their_count;
            server_value = conflict.theirs;
            self.show_local(&server_value, &changes);
            last_conflict = Some(refusal);
        }
        self.show_server(server_value).await;
        Err(last_conflict.map(ClientError::Server).unwrap_or(ClientError::NotLoaded))
    }

    fn show_local(&self, on: &Stream, changes: &StreamUpdate) {
        let mut optimistic = on.clone();
        changes.apply_to(&mut optimistic);
        self.state.send_modify(|state| {
            state.value = Some(optimistic);
            state.origin = Origin::Local;
        });
    }

    async fn show_server(&self, stream: Stream) {
        show_server(&self.shared, &self.state, stream).await;
    }
}

async fn show_server(shared: &Shared, state: &watch::Sender<StreamSnapshot>, stream: Stream) {
    let cached = stream.clone();
    if let Err(error) = shared.store.run(move |store| store.put_stream(&cached)).await {
        tracing::warn!(%error, "caching a stream failed");
    }
    state.send_modify(|snapshot| {
        snapshot.value = Some(stream);
        snapshot.state = LoadState::Synced;
        snapshot.origin = Origin::Server;
        snapshot.error = None;
    });
}

fn parse_stream(body: Value) -> Result<Stream, ClientError> {
    serde_json::from_value(body).map_err(|error| ClientError::Protocol(Arc::new(error)))
}

async fn run(shared: Arc<Shared>, id: StreamId, state: Arc<watch::Sender<StreamSnapshot>>) {
    let cache_id = id.clone();
    match shared.store.run(move |store| store.stream(&cache_id)).await {
        Ok(Some(cached)) => state.send_modify(|snapshot| {
            snapshot.value = Some(cached);
            snapshot.origin = Origin::Cache;
        }),
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, "reading the stream cache failed"),
    }
    let mut link = shared.link.clone();
    let mut fetched_epoch: Option<u64> = None;
    let mut feed: Option<mpsc::UnboundedReceiver<FeedEvent>> = None;
    let mut feed_refused = false;
    loop {
        let now = *link.borrow_and_update();
        if now.connected && fetched_epoch != Some(now.epoch) {
            match shared.request_when_connected("fetch", Some(&id), json!({})).await {
                Ok(body) => match parse_stream(body) {
                    Ok(stream) => {
                        if feed.is_none() && !feed_refused {
                            feed = Some(subscribe(&shared, &id, stream.message_count));
                        }
                        show_server(&shared, &state, stream).await;
                    }
                    Err(error) => show_error(&state, error),
                },
                Err(ClientError::Closed) => return,
                Err(error) => show_error(&state, error),
            }
            fetched_epoch = Some(now.epoch);
        }
        tokio::select! {
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            event = next_event(&mut feed) => match event {
                Some(FeedEvent::Message(message)) => {
                    if message.message_type.starts_with("Streams/") {
                        // A change to fields or counts: the server's value is the truth.
                        fetched_epoch = None;
                    } else {
                        state.send_modify(|snapshot| {
                            if let Some(stream) = &mut snapshot.value {
                                let count = stream.message_count.unwrap_or(0).max(message.ordinal);
                                stream.message_count = Some(count);
                            }
                        });
                    }
                }
                Some(FeedEvent::Listening { message_count }) => {
                    let known = state.borrow().value.as_ref().and_then(|s| s.message_count);
                    if known.is_some_and(|known| known < message_count) {
                        fetched_epoch = None;
                    }
                }
                // Not allowed to listen: fields still load, counts refresh on reconnect.
                Some(FeedEvent::Failed(_)) | None => {
                    feed = None;
                    feed_refused = true;
                }
            }
        }
    }
}

/// The next feed event; never resolves without a feed.
async fn next_event(feed: &mut Option<mpsc::UnboundedReceiver<FeedEvent>>) -> Option<FeedEvent> {
    match feed {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

fn show_error(state: &watch::Sender<StreamSnapshot>, error: ClientError) {
    state.send_modify(|snapshot| {
        snapshot.state = LoadState::Error;
        snapshot.error = Some(error);
    });
}
