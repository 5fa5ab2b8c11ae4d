//! The node's copies of access sources read from other nodes (see `access_source`), shared by
//! every stream actor and read request of the node, so many streams of one type cost one
//! forwarded read of their `<type>*` rows per [`SOURCE_TTL`], not one each.
//!
//! An entry is used while it is younger than [`SOURCE_TTL`] **and** its shard's access epoch
//! on this node is what it was when the read was sent: a node that holds the shard applies
//! every change to it, and that drops the copy at once. The epoch is taken before the read
//! goes out, so a change applied while the read is in flight also drops its answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chorus_types::StreamKey;

use crate::access_source::{SOURCE_TTL, SourceRows};

/// Entries kept before expired ones are swept (and, if still this many, all dropped: a
/// cache miss costs one forwarded read, a memory leak costs the node).
const MAX_ENTRIES: usize = 16_384;

/// A source as read from its shard's leader.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// When the read was sent: the copy is in force until `at + SOURCE_TTL`.
    pub at: Instant,
    /// The source's shard access epoch on this node when the read was sent.
    pub epoch: u64,
    pub rows: Arc<SourceRows>,
}

impl Fetched {
    fn fresh(&self, now: Instant, epoch: u64) -> bool {
        self.epoch == epoch && now.saturating_duration_since(self.at) < SOURCE_TTL
    }
}

#[derive(Default)]
pub struct SourceCache {
    entries: Mutex<HashMap<StreamKey, Fetched>>,
}

impl SourceCache {
    /// The copy of `key` if still in force, given its shard's current access epoch.
    pub fn get(&self, key: &StreamKey, epoch: u64) -> Option<Fetched> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).filter(|f| f.fresh(Instant::now(), epoch)).cloned()
    }

    pub fn insert(&self, key: StreamKey, fetched: Fetched) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            let now = Instant::now();
            entries.retain(|_, f| now.saturating_duration_since(f.at) < SOURCE_TTL);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, fetched);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chorus_types::{PublisherId, StreamName};

    use super::*;

    fn key(name: &str) -> StreamKey {
        StreamKey::new(PublisherId::app(), StreamName::new(name).unwrap())
    }

    fn fetched(at: Instant, epoch: u64) -> Fetched {
        Fetched { at, epoch, rows: Arc::new(SourceRows::default()) }
    }

    #[test]
    fn an_entry_is_used_while_young_and_its_shard_unchanged() {
        let cache = SourceCache::default();
        cache.insert(key("Chat/room*"), fetched(Instant::now(), 7));
        assert!(cache.get(&key("Chat/room*"), 7).is_some());
        // A change to its shard applied here.
        assert!(cache.get(&key("Chat/room*"), 8).is_none());
        assert!(cache.get(&key("Other*"), 7).is_none());
    }

    #[test]
    fn an_entry_expires_after_the_ttl() {
        let cache = SourceCache::default();
        let old = Instant::now().checked_sub(SOURCE_TTL).unwrap();
        cache.insert(key("Chat/room*"), fetched(old, 0));
        assert!(cache.get(&key("Chat/room*"), 0).is_none());
    }

    #[test]
    fn a_full_cache_sweeps_expired_entries_first() {
        let cache = SourceCache::default();
        let old = Instant::now().checked_sub(SOURCE_TTL).unwrap();
        for i in 0..MAX_ENTRIES {
            cache.insert(key(&format!("T{i}*")), fetched(old, 0));
        }
        cache.insert(key("Fresh*"), fetched(Instant::now(), 0));
        let entries = cache.entries.lock().unwrap();
        assert_eq!(entries.len(), 1);
    }
}
