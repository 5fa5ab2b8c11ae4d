//! A session's listens: which stream has a listen task, and the task itself, which catches up
//! and then stays attached to the stream's feed (`fanout`).
//!
//! Listen and unlisten requests are handled concurrently, yet their effect must follow the
//! order the client sent them in. The reader loop therefore stamps each with an increasing
//! epoch when it reads it ([`ListenRegistry::supersede`], [`ListenRegistry::retire`]); a listen
//! whose service call returns after a later request for the same stream was read does not
//! start its forwarder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chorus_api::Caller;
use chorus_types::StreamKey;
use tokio::task::JoinHandle;

use crate::fanout::{Ended, FeedUse, Listener};
use crate::metrics::{GaugeGuard, LISTENS, RESYNCS};
use crate::ws::frame::resync_frame;
use crate::ws::outbound::Outbound;

/// Streams one session may listen to at once: each listen holds a task and a place in a
/// feed, so a client cannot open them without bound.
pub(crate) const MAX_LISTENS: usize = 1000;

/// The listen of one stream: the epoch of the latest listen/unlisten read for it, and its
/// forwarder once started.
struct Slot {
    epoch: u64,
    forwarder: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Slots {
    by_stream: HashMap<StreamKey, Slot>,
    next_epoch: u64,
}

/// The listens of one session. Its lock is held only for map updates, never across `.await`.
#[derive(Default)]
pub(crate) struct ListenRegistry {
    slots: Mutex<Slots>,
}

impl ListenRegistry {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        // The map stays consistent even if a holder panicked: every update is one statement.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A listen of `key` was read: it supersedes every earlier listen of that stream. Returns
    /// its epoch and the forwarder it replaces, which the caller stops before the new listen
    /// replies, so no old event follows the new `ok`.
    /// `None` when the session already listens to [`MAX_LISTENS`] other streams.
    pub(crate) fn supersede(&self, key: &StreamKey) -> Option<(u64, Option<JoinHandle<()>>)> {
        let mut slots = self.lock();
        if !slots.by_stream.contains_key(key) && slots.by_stream.len() >= MAX_LISTENS {
            return None;
        }
        let epoch = slots.next_epoch;
        slots.next_epoch += 1;
        let slot = slots.by_stream.entry(key.clone()).or_insert(Slot { epoch, forwarder: None });
        slot.epoch = epoch;
        Some((epoch, slot.forwarder.take()))
    }

    /// An unlisten of `key` was read: forgets the stream, so a listen still in flight does not
    /// start. Returns the forwarder to stop.
    pub(crate) fn retire(&self, key: &StreamKey) -> Option<JoinHandle<()>> {
        self.lock().by_stream.remove(key).and_then(|slot| slot.forwarder)
    }

    /// Starts the forwarder of the listen stamped `epoch`, unless a later request for the
    /// stream superseded it. Returns whether it started.
    pub(crate) fn install(
        &self,
        key: &StreamKey,
        epoch: u64,
        start: impl FnOnce() -> JoinHandle<()>,
    ) -> bool {
        let mut slots = self.lock();
        match slots.by_stream.get_mut(key) {
            Some(slot) if slot.epoch == epoch => {
                slot.forwarder = Some(start());
                true
            }
            _ => false,
        }
    }

    /// Whether the listen stamped `epoch` is still the latest request for `key`.
    pub(crate) fn is_current(&self, key: &StreamKey, epoch: u64) -> bool {
        self.lock().by_stream.get(key).is_some_and(|slot| slot.epoch == epoch)
    }

    /// The listen stamped `epoch` is over (failed, or its forwarder ended by itself): forget
    /// the stream unless a later request took it over. A forwarder calls this as its last act,
    /// so dropping its own handle here detaches nothing that is still running.
    pub(crate) fn finished(&self, key: &StreamKey, epoch: u64) {
        let mut slots = self.lock();
        if slots.by_stream.get(key).is_some_and(|slot| slot.epoch == epoch) {
            slots.by_stream.remove(key);
        }
    }

    /// The session is closing: every forwarder, for the caller to abort and await.
    pub(crate) fn take_all(&self) -> Vec<JoinHandle<()>> {
        let mut slots = self.lock();
        slots.by_stream.drain().filter_map(|(_, slot)| slot.forwarder).collect()
    }
}

/// Stops a forwarder and waits until it can no longer send anything.
pub(crate) async fn stop_forwarder(forwarder: Option<JoinHandle<()>>) {
    let Some(forwarder) = forwarder else { return };
    forwarder.abort();
    if let Err(error) = forwarder.await
        && error.is_panic()
    {
        tracing::error!(%error, "listen forwarder panicked");
    }
}

/// One session listen on its stream's feed, already joined (its `ok` queued): the backlog,
/// then live messages until the session unlistens (the task is aborted, which detaches it) or
/// falls behind.
pub(crate) struct FeedListen {
    pub(crate) feed: FeedUse,
    pub(crate) out: Outbound,
    pub(crate) caller: Caller,
    pub(crate) session_id: u64,
    pub(crate) key: StreamKey,
    pub(crate) epoch: u64,
    pub(crate) registry: Arc<ListenRegistry>,
}

impl FeedListen {
    /// Runs until the listen ends; `last` is the last ordinal the session has.
    pub(crate) async fn run(mut self, last: u64) {
        let _listening = GaugeGuard::hold(&LISTENS);
        let who = Listener { caller: &self.caller, session: self.session_id, out: &self.out };
        let ended = match self.feed.attach(&who, last).await {
            Ok(()) => self.feed.ended().await,
            Err(ended) => ended,
        };
        drop(self.feed);
        if let Ended::Resync(from) = ended {
            RESYNCS.inc();
            tracing::debug!(stream = %self.key, from, "listen ended, sending resync");
            self.out.resync(resync_frame(&self.key, from)).await;
        }
        self.registry.finished(&self.key, self.epoch);
    }
}

#[cfg(test)]
mod tests {
    use chorus_types::{PublisherId, StreamName};

    use super::*;

    fn key(name: &str) -> StreamKey {
        StreamKey::new(PublisherId::new("a").unwrap(), StreamName::new(name).unwrap())
    }

    #[tokio::test]
    async fn later_requests_supersede_earlier_listens() {
        let registry = ListenRegistry::default();
        let (first, previous) = registry.supersede(&key("x")).unwrap();
        assert!(previous.is_none());
        let (second, _) = registry.supersede(&key("x")).unwrap();
        assert!(second > first);
        // The first listen's service call returned late: it must not start.
        assert!(!registry.install(&key("x"), first, || tokio::spawn(async {})));
        assert!(registry.install(&key("x"), second, || tokio::spawn(async {})));
        // A third listen takes over the running forwarder.
        let (_, replaced) = registry.supersede(&key("x")).unwrap();
        assert!(replaced.is_some());
        stop_forwarder(replaced).await;
    }

    #[tokio::test]
    async fn unlisten_stops_pending_and_running_listens() {
        let registry = ListenRegistry::default();
        let (pending, _) = registry.supersede(&key("x")).unwrap();
        assert!(registry.retire(&key("x")).is_none());
        assert!(!registry.install(&key("x"), pending, || tokio::spawn(async {})));

        let (running, _) = registry.supersede(&key("y")).unwrap();
        assert!(registry.install(&key("y"), running, || tokio::spawn(std::future::pending())));
        let forwarder = registry.retire(&key("y"));
        assert!(forwarder.is_some());
        stop_forwarder(forwarder).await;
        assert!(registry.take_all().is_empty());
    }

    #[test]
    fn finished_forgets_only_its_own_epoch() {
        let registry = ListenRegistry::default();
        let (old, _) = registry.supersede(&key("x")).unwrap();
        let (new, _) = registry.supersede(&key("x")).unwrap();
        registry.finished(&key("x"), old);
        assert!(registry.lock().by_stream.contains_key(&key("x")));
        registry.finished(&key("x"), new);
        assert!(registry.lock().by_stream.is_empty());
    }
}
