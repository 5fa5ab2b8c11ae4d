//! Listening: one server-side `listen` per stream (the server keeps one per session and
//! stream), shared by every live object of that stream, resumed on each reconnect.
//!
//! ```text
//!  connection ──FeedInput──▶ feed task (per stream) ──FeedEvent──▶ subscribers
//!                             last ordinal held,                  (each an OrderedFeed or
//!                             listen since=last per epoch          a LiveStream)
//! ```
//!
//! The feed keeps the highest ordinal it passed on and, on every new connection epoch,
//! listens again with `since` = that ordinal, so the server sends what was missed and then the
//! live tail. Duplicates (at or below `last`) are dropped; a gap (an ordinal beyond
//! `last + 1`, or a `resync`) makes it listen again from `last`, which the server answers with
//! the backlog. Each subscriber then has its own starting point; [`OrderedFeed`] fills from
//! history whatever lies between its own last ordinal and what the feed delivers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::error::ClientError;
use crate::model::{Message, StreamId};
use crate::shared::Shared;
use crate::util::lock;

/// How often an idle feed checks whether anyone still listens.
const RETIRE_CHECK: Duration = Duration::from_secs(5);

/// What the connection routes to a feed.
#[derive(Debug)]
pub(crate) enum FeedInput {
    /// Boxed: a message is large and resyncs are rare.
    Message(Box<Message>),
    /// The server ended the listen because this session fell behind.
    Resync { from: u64 },
}

/// What a feed tells its subscribers.
#[derive(Clone, Debug)]
pub(crate) enum FeedEvent {
    /// The next message of the stream, in order after the previous one of this feed.
    Message(Message),
    /// A listen was (re)established; the stream has `message_count` messages.
    Listening { message_count: u64 },
    /// The listen was refused for good (`forbidden`, `not_found`); the feed ends.
    Failed(ClientError),
}

pub(crate) type Subscriber = mpsc::UnboundedSender<FeedEvent>;

/// Subscribes to a stream's feed, starting one (listening after `since`, or from now when
/// `None`) when there is none.
pub(crate) fn subscribe(
    shared: &Arc<Shared>,
    stream: &StreamId,
    since: Option<u64>,
) -> mpsc::UnboundedReceiver<FeedEvent> {
    let (subscriber, events) = mpsc::unbounded_channel();
    let mut feeds = lock(&shared.feeds);
    // The registry lock is held across lookup and insert, and a retiring feed removes its
    // entry under the same lock, so a subscriber never joins a feed that is going away.
    if let Some(add) = feeds.get(stream)
        && add.send(subscriber.clone()).is_ok()
    {
        return events;
    }
    let (add, additions) = mpsc::unbounded_channel();
    let (input, inputs) = mpsc::unbounded_channel();
    feeds.insert(stream.clone(), add);
    lock(&shared.routes.by_stream).insert(stream.clone(), input);
    let feed = Feed {
        shared: Arc::clone(shared),
        stream: stream.clone(),
        last: since,
        subscribers: vec![subscriber],
        inputs,
        additions,
    };
    shared.spawn(feed.run());
    events
}

struct Feed {
    shared: Arc<Shared>,
    stream: StreamId,
    /// The highest ordinal passed on; `None` until a listen from now has answered.
    last: Option<u64>,
    subscribers: Vec<Subscriber>,
    inputs: mpsc::UnboundedReceiver<FeedInput>,
    additions: mpsc::UnboundedReceiver<Subscriber>,
}

impl Feed {
    async fn run(mut self) {
        let mut link = self.shared.link.clone();
        let mut listening_epoch: Option<u64> = None;
        let mut backoff = Backoff::new(self.shared.backoff);
        let mut retire_check = tokio::time::interval(RETIRE_CHECK);
        let mut unsaved = Vec::new();
        loop {
            let state = *link.borrow_and_update();
            if state.connected && listening_epoch != Some(state.epoch) {
                match self.listen().await {
                    Ok(()) => {
                        listening_epoch = Some(state.epoch);
                        backoff.reset();
                    }
                    // The link dropped; the next epoch retries.
                    Err(ClientError::Disconnected) => {}
                    Err(ClientError::Server(error)) if error.is_transient() => {
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                    Err(error) => {
                        tracing::debug!(stream = %self.stream, %error, "listen refused");
                        // Subscribers that join while this one retires hear it too.
                        loop {
                            self.broadcast(FeedEvent::Failed(error.clone()));
                            self.subscribers.clear();
                            if self.retire().await {
                                return;
                            }
                        }
                    }
                }
            }
            tokio::select! {
                changed = link.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                input = self.inputs.recv() => match input {
                    Some(FeedInput::Message(message)) => {
                        if !self.accept(*message, &mut unsaved) {
                            listening_epoch = None;
                        }
                    }
                    Some(FeedInput::Resync { from }) => {
                        tracing::debug!(stream = %self.stream, from, "resync; listening again");
                        listening_epoch = None;
                    }
                    None => return,
                },
                addition = self.additions.recv() => {
                    if let Some(subscriber) = addition {
                        self.add(subscriber);
                    }
                }
                _ = retire_check.tick() => {
                    if self.unused() {
                        if self.retire().await {
                            return;
                        }
                        // Someone subscribed while the listen was being ended: listen again.
                        listening_epoch = None;
                    }
                }
            }
            // Cache in batches: once the burst of queued events is through.
            if !unsaved.is_empty() && self.inputs.is_empty() {
                self.shared.cache_messages(std::mem::take(&mut unsaved)).await;
            }
        }
    }

    async fn listen(&mut self) -> Result<(), ClientError> {
        let args = match self.last {
            Some(since) => json!({"since": since}),
            None => json!({}),
        };
        let ok = self.shared.request("listen", Some(&self.stream), args).await?;
        let message_count = ok["messageCount"].as_u64().unwrap_or(0);
        if ok["recovered"] == json!(false) {
            tracing::warn!(stream = %self.stream, since = ?self.last, message_count, "listen not fully recovered");
        }
        let last = *self.last.get_or_insert(message_count);
        tracing::debug!(stream = %self.stream, since = last, message_count, "listening");
        self.broadcast(FeedEvent::Listening { message_count });
        Ok(())
    }

    /// Passes a message on if it is the next one; `false` when there is a gap before it.
    fn accept(&mut self, message: Message, unsaved: &mut Vec<Message>) -> bool {
        let last = self.last.unwrap_or(0);
        if message.ordinal <= last {
            return true;
        }
        if message.ordinal > last + 1 {
            tracing::debug!(stream = %self.stream, last, got = message.ordinal, "gap; listening again");
            return false;
        }
        self.last = Some(message.ordinal);
        unsaved.push(message.clone());
        self.broadcast(FeedEvent::Message(message));
        true
    }

    fn add(&mut self, subscriber: Subscriber) {
        // A late subscriber learns where the feed stands, to fill its own gap up to it.
        if let Some(last) = self.last
            && subscriber.send(FeedEvent::Listening { message_count: last }).is_err()
        {
            return;
        }
        self.subscribers.push(subscriber);
    }

    fn broadcast(&mut self, event: FeedEvent) {
        self.subscribers.retain(|subscriber| subscriber.send(event.clone()).is_ok());
    }

    fn unused(&mut self) -> bool {
        self.subscribers.retain(|subscriber| !subscriber.is_closed());
        self.subscribers.is_empty()
    }

    /// Ends the server-side listen and leaves the registries; `false` when a subscriber
    /// joined in the meantime (the listen must then be established again).
    ///
    /// The `unlisten` goes out while the feed is still registered: were the entry removed
    /// first, a new feed for the stream could send its `listen` before this `unlisten`, which
    /// would then end the new feed's listen on the server.
    async fn retire(&mut self) -> bool {
        if self.shared.link.borrow().connected {
            // Best effort: a failed unlisten only costs the server a listen until we leave.
            let unlisten = self.shared.request("unlisten", Some(&self.stream), json!({})).await;
            if let Err(error) = unlisten {
                tracing::debug!(stream = %self.stream, %error, "unlisten failed");
            }
        }
        let shared = Arc::clone(&self.shared);
        let mut feeds = lock(&shared.feeds);
        while let Ok(subscriber) = self.additions.try_recv() {
            self.add(subscriber);
        }
        if !self.unused() {
            return false;
        }
        feeds.remove(&self.stream);
        lock(&shared.routes.by_stream).remove(&self.stream);
        true
    }
}

/// A subscriber's view of a feed: every message after its own starting point, in order,
/// each once, with gaps filled from history.
///
/// Cancel-safe: [`OrderedFeed::next`] changes its state only after each await completes, so
/// it can sit in a `select!`.
pub(crate) struct OrderedFeed {
    shared: Arc<Shared>,
    stream: StreamId,
    events: mpsc::UnboundedReceiver<FeedEvent>,
    /// The last ordinal returned; `None` for "from now" until the feed says where now is.
    last: Option<u64>,
    /// The highest ordinal known to exist.
    known: u64,
    /// Received but not yet returned (ahead of a gap).
    held: BTreeMap<u64, Message>,
    failed: Option<ClientError>,
}

impl OrderedFeed {
    pub(crate) fn new(shared: &Arc<Shared>, stream: &StreamId, since: Option<u64>) -> OrderedFeed {
        OrderedFeed {
            shared: Arc::clone(shared),
            stream: stream.clone(),
            events: subscribe(shared, stream, since),
            last: since,
            known: since.unwrap_or(0),
            held: BTreeMap::new(),
            failed: None,
        }
    }

    /// The next message; an error when listening or history was refused for good, `None`
    /// once the client is gone.
    pub(crate) async fn next(&mut self) -> Option<Result<Message, ClientError>> {
        loop {
            if let Some(error) = &self.failed {
                return Some(Err(error.clone()));
            }
            if let Some(last) = self.last {
                if let Some(message) = self.held.remove(&(last + 1)) {
                    self.last = Some(message.ordinal);
                    return Some(Ok(message));
                }
                if self.known > last {
                    self.fill(last).await;
                    continue;
                }
            }
            match self.events.recv().await? {
                FeedEvent::Message(message) => {
                    let last = *self.last.get_or_insert(message.ordinal.saturating_sub(1));
                    if message.ordinal > last {
                        self.known = self.known.max(message.ordinal);
                        self.held.insert(message.ordinal, message);
                    }
                }
                FeedEvent::Listening { message_count } => {
                    self.last.get_or_insert(message_count);
                    self.known = self.known.max(message_count);
                }
                FeedEvent::Failed(error) => self.failed = Some(error),
            }
        }
    }

    /// Fetches the gap after `last` (up to the first held message or `known`).
    async fn fill(&mut self, last: u64) {
        let upto = self.held.keys().next().map(|first| first - 1).unwrap_or(self.known);
        match self.shared.history(&self.stream, last + 1, upto).await {
            Ok(messages) if messages.first().map(|m| m.ordinal) == Some(last + 1) => {
                for message in messages {
                    self.held.insert(message.ordinal, message);
                }
            }
            Ok(_) => self.failed = Some(ClientError::MissingHistory { from: last + 1 }),
            Err(error) => self.failed = Some(error),
        }
    }
}

/// Messages of one stream as they arrive, in ordinal order, each once, across reconnects:
/// what [`crate::Client::listen`] returns (bots, `chorus tail`).
pub struct MessageFeed {
    inner: OrderedFeed,
}

impl MessageFeed {
    pub(crate) fn new(inner: OrderedFeed) -> MessageFeed {
        MessageFeed { inner }
    }

    /// The next message. `Err` when the server refused the listen (e.g. `forbidden`,
    /// `not_found`) or the history needed to fill a gap; it then repeats. `None` once the
    /// client is gone.
    pub async fn next(&mut self) -> Option<Result<Message, ClientError>> {
        self.inner.next().await
    }
}
