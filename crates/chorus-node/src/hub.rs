//! Local fan-out: committed messages and ephemerals to the listens of this process.
//!
//! The state machine calls [`Hub::committed`] after each applied batch is written, in commit
//! order per shard (a stream lives in one shard, so per stream too). A listen subscribes
//! *before* it reads the stream's `messageCount`, so every message after that count reaches it
//! either from storage or from here.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chorus_api::{Delivered, ListenEvent, Relayed, wire};
use chorus_storage::{AccessChange, ApplyObserver};
use chorus_types::shard::shard_of;
use chorus_types::{MessageRecord, ShardId, StreamKey};
use tokio::sync::broadcast;

/// Events buffered per stream for slow listen tasks before they must catch up from storage.
const STREAM_BUFFER: usize = 4096;

#[derive(Default)]
pub struct Hub {
    streams: Mutex<HashMap<StreamKey, broadcast::Sender<ListenEvent>>>,
    /// Bumped whenever an applied batch may have changed access (anything but posts), so
    /// stream actors know their cached access context is stale.
    access_epoch: AtomicU64,
    /// Bumped per shard (indexed by shard id) when an applied batch changed stream records or
    /// access rows there, so the node's copies of access sources read from other nodes
    /// (`source_cache`) are dropped by changes to their own shard only — not by the joins of
    /// a busy room next to them.
    shard_access_epochs: Box<[AtomicU64]>,
    /// Map size at which `subscribe` next drops the channels nobody listens to any more
    /// (quiet streams would otherwise keep theirs until their next message).
    sweep_at: AtomicU64,
    /// Parent → the streams listened here that inherit access from it (as last authorized),
    /// so a change of a parent's access reaches its children's listens too.
    children: Mutex<HashMap<StreamKey, HashSet<StreamKey>>>,
    /// Size of `children` at which `note_parents` next drops the children nobody listens to.
    children_sweep_at: AtomicU64,
    /// Passes the streams whose access changed on a shard to the nodes that hold no replica
    /// of it (set by the cluster router; unset on a single node and in tests).
    access_relay: std::sync::OnceLock<AccessRelay>,
}

/// See [`Hub::set_access_relay`].
pub type AccessRelay = Box<dyn Fn(ShardId, &[StreamKey]) + Send + Sync>;

/// Smallest map size at which sweeping starts.
const SWEEP_FLOOR: u64 = 1024;

impl Hub {
    pub fn new(shard_count: u16) -> Hub {
        let shard_access_epochs = (0..shard_count).map(|_| AtomicU64::new(0)).collect();
        Hub { shard_access_epochs, ..Hub::default() }
    }

    pub fn subscribe(&self, key: &StreamKey) -> broadcast::Receiver<ListenEvent> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let len = streams.len() as u64;
        if len >= self.sweep_at.load(Ordering::Relaxed).max(SWEEP_FLOOR) {
            // Amortised: the threshold doubles with what remains, so sweeps stay rare.
            streams.retain(|_, tx| tx.receiver_count() > 0);
            self.sweep_at.store((streams.len() as u64 * 2).max(SWEEP_FLOOR), Ordering::Relaxed);
        }
        streams
            .entry(key.clone())
            .or_insert_with(|| broadcast::channel(STREAM_BUFFER).0)
            .subscribe()
    }

    fn sender(&self, key: &StreamKey) -> Option<broadcast::Sender<ListenEvent>> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let tx = streams.get(key)?;
        if tx.receiver_count() == 0 {
            streams.remove(key);
            return None;
        }
        Some(tx.clone())
    }

    /// Records that `child`, listened here, inherits access from `parents` (called whenever
    /// its listeners are authorized, so a changed `inheritAccess` is picked up by the re-check
    /// its own change triggers). A parent it no longer names only costs a spare re-check.
    pub fn note_parents(&self, child: &StreamKey, parents: impl Iterator<Item = StreamKey>) {
        let mut parents = parents.peekable();
        if parents.peek().is_none() {
            return;
        }
        // Lock order: `streams`, then `children`; `access_notice` never holds both.
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        for parent in parents {
            children.entry(parent).or_default().insert(child.clone());
        }
        // The map grows only here, so it is swept only here, amortised like the streams'
        // sweep: children of streams nobody listens to any more go.
        let len = children.len() as u64;
        if len >= self.children_sweep_at.load(Ordering::Relaxed).max(SWEEP_FLOOR) {
            let listened = |kid: &StreamKey| {
                kid == child || streams.get(kid).is_some_and(|tx| tx.receiver_count() > 0)
            };
            children.retain(|_, kids| {
                kids.retain(|kid| listened(kid));
                !kids.is_empty()
            });
            let next = (children.len() as u64 * 2).max(SWEEP_FLOOR);
            self.children_sweep_at.store(next, Ordering::Relaxed);
        }
    }

    /// The access notice for `key`'s listens and for those of the streams inheriting from it.
    fn access_notice(&self, key: &StreamKey) {
        if let Some(tx) = self.sender(key) {
            let _ = tx.send(ListenEvent::AccessChanged);
        }
        let kids: Vec<StreamKey> = {
            let children = self.children.lock().unwrap_or_else(|p| p.into_inner());
            children.get(key).map(|kids| kids.iter().cloned().collect()).unwrap_or_default()
        };
        for kid in kids {
            if let Some(tx) = self.sender(&kid) {
                let _ = tx.send(ListenEvent::AccessChanged);
            }
        }
    }

    pub fn access_epoch(&self) -> u64 {
        self.access_epoch.load(Ordering::Acquire)
    }

    /// The access epoch of one shard (0 for a group that is not a shard, e.g. the meta group).
    pub fn shard_access_epoch(&self, shard: ShardId) -> u64 {
        self.shard_access_epochs
            .get(usize::from(shard.0))
            .map_or(0, |epoch| epoch.load(Ordering::Acquire))
    }

    /// Called with the streams whose access changed in every batch applied here that changed
    /// any. Set once.
    pub fn set_access_relay(&self, relay: AccessRelay) {
        if self.access_relay.set(relay).is_err() {
            tracing::debug!("access relay already set");
        }
    }

    /// The access of `keys` changed on a shard this node holds no replica of (its leader
    /// relays it; past 3 nodes a node holds only its share of the shards). The copies of
    /// access sources on the shards of `keys` read from other nodes are dropped (their shards'
    /// epochs move, as a change applied here moves them), stream actors assemble their
    /// contexts again, and the listens of these streams, of the streams inheriting from them
    /// and (for a `<type>*` rule) of their publisher's streams are checked again before their
    /// next message, as for a change applied here.
    pub fn remote_access_notice(&self, keys: &[StreamKey]) {
        // `new` made one epoch per shard from a u16 count.
        let shards = u16::try_from(self.shard_access_epochs.len()).unwrap_or(u16::MAX);
        for key in keys {
            let shard = shard_of(key, shards);
            if let Some(epoch) = self.shard_access_epochs.get(usize::from(shard.0)) {
                epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.access_epoch.fetch_add(1, Ordering::AcqRel);
        for key in keys {
            if key.name.is_type_rule() {
                self.rule_changed(key);
            } else {
                self.access_notice(key);
            }
        }
    }

    /// A `<type>*` rule changed: every stream of its publisher (of every publisher, for the
    /// app's rules) listened to here gets the access notice. Stream keys do not carry the type,
    /// so streams of other types of that publisher are checked too; rule changes are rare
    /// admin acts. Nodes that hold no replica of the rule's shard hear of it from its leader
    /// ([`Hub::remote_access_notice`]), as they do of changes of a parent on such a shard.
    fn rule_changed(&self, rule: &StreamKey) {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        for (key, tx) in streams.iter() {
            let affected = rule.publisher_id.is_app() || key.publisher_id == rule.publisher_id;
            if affected && !key.name.is_type_rule() && tx.receiver_count() > 0 {
                let _ = tx.send(ListenEvent::AccessChanged);
            }
        }
    }

    pub fn relay(&self, key: &StreamKey, relayed: Relayed) {
        if let Some(tx) = self.sender(key) {
            // No receiver left is fine: nobody is listening.
            let _ = tx.send(ListenEvent::Ephemeral(Arc::new(relayed)));
        }
    }
}

pub fn delivered(record: MessageRecord) -> Arc<Delivered> {
    let frame: Arc<str> = wire::message_event(&record).into();
    Arc::new(Delivered { record, frame })
}

impl ApplyObserver for Hub {
    fn committed(
        &self,
        shard: ShardId,
        messages: Vec<MessageRecord>,
        access: AccessChange,
        access_keys: &[StreamKey],
    ) {
        if access == AccessChange::Sources
            && let Some(epoch) = self.shard_access_epochs.get(usize::from(shard.0))
        {
            epoch.fetch_add(1, Ordering::AcqRel);
        }
        if access != AccessChange::Nothing {
            self.access_epoch.fetch_add(1, Ordering::AcqRel);
        }
        if !access_keys.is_empty()
            && let Some(relay) = self.access_relay.get()
        {
            relay(shard, access_keys);
        }
        // Before this batch's messages: whatever it posted after an access change must not
        // reach a listener the change shut out.
        for key in access_keys {
            if key.name.is_type_rule() {
                self.rule_changed(key);
            } else {
                self.access_notice(key);
            }
        }
        let mut current: Option<(StreamKey, Option<broadcast::Sender<ListenEvent>>)> = None;
        for m in messages {
            let key = m.stream_key();
            if current.as_ref().is_none_or(|(k, _)| *k != key) {
                let tx = self.sender(&key);
                current = Some((key, tx));
            }
            if let Some((_, Some(tx))) = &current {
                let _ = tx.send(ListenEvent::Message(delivered(m)));
            }
        }
    }
}
