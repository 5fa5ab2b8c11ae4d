//! [`LiveMessages`]: a stream's messages as a live collection: the newest page (cache, then
//! network), older pages on demand, new messages appended in ordinal order without gaps or
//! duplicates, and this client's unsent posts beside them.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::ClientError;
use crate::feed::OrderedFeed;
use crate::live::{LoadState, Origin, Snapshot};
use crate::model::{Message, StreamId};
use crate::outbox::{LocalMessage, local_messages};
use crate::shared::Shared;
use crate::util::TaskGuard;

/// What a live collection holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MessagesView {
    /// Contiguous ordinals, oldest first: the loaded pages plus everything since.
    pub messages: Vec<Message>,
    /// This client's posts to the stream not yet synced (or refused), in posting order. A
    /// synced post leaves this list and appears in `messages` at its ordinal.
    pub pending: Vec<LocalMessage>,
    /// Whether older messages exist beyond the first loaded one.
    pub has_older: bool,
}

pub type MessagesSnapshot = Snapshot<MessagesView>;

type PageRequest = oneshot::Sender<Result<usize, ClientError>>;

/// A stream's messages, live. Returned at once by [`crate::Client::messages`]; dropping it
/// stops it.
pub struct LiveMessages {
    id: StreamId,
    state: watch::Receiver<MessagesSnapshot>,
    pages: mpsc::Sender<PageRequest>,
    _task: TaskGuard,
}

impl LiveMessages {
    pub(crate) fn start(shared: &Arc<Shared>, id: StreamId) -> LiveMessages {
        let (state_tx, state) = watch::channel(MessagesSnapshot::default());
        let (pages, page_requests) = mpsc::channel(4);
        let collection = Collection {
            shared: Arc::clone(shared),
            id: id.clone(),
            state: state_tx,
            page_requests,
        };
        LiveMessages { id, state, pages, _task: TaskGuard::spawn(collection.run()) }
    }

    pub fn id(&self) -> &StreamId {
        &self.id
    }

    pub fn get(&self) -> MessagesSnapshot {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change.
    pub fn watch(&self) -> watch::Receiver<MessagesSnapshot> {
        self.state.clone()
    }

    /// Waits until `ready` holds for the state, and returns that state.
    pub async fn wait_for(&self, ready: impl FnMut(&MessagesSnapshot) -> bool) -> MessagesSnapshot {
        let mut receiver = self.state.clone();
        match receiver.wait_for(ready).await {
            Ok(state) => state.clone(),
            Err(_) => self.get(),
        }
    }

    /// Loads the page before the oldest loaded message; returns how many were added (0 at
    /// the beginning of the stream). Waits for a connection and for the first page.
    pub async fn next_page(&self) -> Result<usize, ClientError> {
        let (reply, outcome) = oneshot::channel();
        self.pages.send(reply).await.map_err(|_| ClientError::Closed)?;
        outcome.await.map_err(|_| ClientError::Closed)?
    }
}

struct Collection {
    shared: Arc<Shared>,
    id: StreamId,
    state: watch::Sender<MessagesSnapshot>,
    page_requests: mpsc::Receiver<PageRequest>,
}

impl Collection {
    async fn run(mut self) {
        let page_size = self.shared.page_size;
        let cache_id = self.id.clone();
        let cap = usize::try_from(page_size).unwrap_or(usize::MAX);
        match self.shared.store.run(move |store| store.recent_messages(&cache_id, cap)).await {
            Ok(cached) if !cached.is_empty() => self.state.send_modify(|snapshot| {
                snapshot.value.has_older = cached.first().is_some_and(|m| m.ordinal > 1);
                snapshot.value.messages = cached;
                snapshot.origin = Origin::Cache;
            }),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "reading the message cache failed"),
        }
        self.show_pending();
        let mut posts = self.shared.posts_changed.subscribe();

        // The newest page, from the server; meanwhile the cache and local posts show.
        let newest = tokio::select! {
            newest = self.shared.page_before(&self.id, None, page_size) => newest,
            () = self.refresh_pending_until_closed(&mut posts) => return,
        };
        let newest = match newest {
            Ok(newest) => newest,
            Err(error) => return self.fail(error).await,
        };
        self.shared.cache_messages(newest.clone()).await;
        let last = newest.last().map(|message| message.ordinal).unwrap_or(0);
        self.state.send_modify(|snapshot| {
            snapshot.value.has_older = newest.first().is_some_and(|m| m.ordinal > 1);
            snapshot.value.messages = newest;
            snapshot.state = LoadState::Synced;
            snapshot.origin = Origin::Server;
        });
        let mut feed = OrderedFeed::new(&self.shared, &self.id, Some(last));
        loop {
            tokio::select! {
                next = feed.next() => match next {
                    Some(Ok(message)) => self.state.send_modify(|snapshot| {
                        snapshot.value.messages.push(message);
                        snapshot.origin = Origin::Server;
                    }),
                    Some(Err(error)) => return self.fail(error).await,
                    None => return,
                },
                request = self.page_requests.recv() => match request {
                    Some(reply) => {
                        let loaded = self.older_page().await;
                        if reply.send(loaded).is_err() {
                            tracing::trace!("page requester left");
                        }
                    }
                    None => return,
                },
                changed = posts.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.show_pending();
                }
            }
        }
    }

    async fn older_page(&self) -> Result<usize, ClientError> {
        let first = self.state.borrow().value.messages.first().map(|m| m.ordinal);
        let Some(first) = first.filter(|first| *first > 1) else {
            return Ok(0);
        };
        let older =
            self.shared.page_before(&self.id, Some(first - 1), self.shared.page_size).await?;
        let added = older.len();
        self.shared.cache_messages(older.clone()).await;
        self.state.send_modify(|snapshot| {
            snapshot.value.has_older = older.first().is_some_and(|m| m.ordinal > 1);
            let newer = std::mem::take(&mut snapshot.value.messages);
            snapshot.value.messages = older;
            snapshot.value.messages.extend(newer);
        });
        Ok(added)
    }

    fn show_pending(&self) {
        let pending = local_messages(&self.shared, &self.id);
        self.state.send_if_modified(|snapshot| {
            let changed = snapshot.value.pending != pending;
            snapshot.value.pending = pending;
            changed
        });
    }

    /// Keeps the pending list current; resolves when the client is gone.
    async fn refresh_pending_until_closed(&self, posts: &mut watch::Receiver<u64>) {
        while posts.changed().await.is_ok() {
            self.show_pending();
        }
    }

    /// A final refusal (`forbidden`, `not_found`): the collection keeps what it showed and
    /// keeps the pending list current until dropped.
    async fn fail(&self, error: ClientError) {
        self.state.send_modify(|snapshot| {
            snapshot.state = LoadState::Error;
            snapshot.error = Some(error);
        });
        let mut posts = self.shared.posts_changed.subscribe();
        self.refresh_pending_until_closed(&mut posts).await;
    }
}
