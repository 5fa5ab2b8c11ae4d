//! Which peer nodes are up, and which groups each one leads.
//!
//! Hibernating groups ([`super::hibernate`]) send no heartbeats, so a follower cannot use
//! Raft's own timer to notice its leader is gone. Node liveness replaces it: each node pings
//! every peer [`PING_EVERY`] (one tiny RPC per node pair, whatever the number of groups), and
//! any Raft batch received from a peer counts as hearing from it too. A ping's reply lists
//! the groups the peer leads at that moment, so a leader that stepped down (for example,
//! removed from the group by a placement change) stops being trusted within one ping even
//! though its node is up.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often each peer is pinged.
pub const PING_EVERY: Duration = Duration::from_millis(100);
/// A ping not answered within this long counts as missed.
pub const PING_TIMEOUT: Duration = Duration::from_millis(300);
/// A peer not heard from for this long is taken for down. Four ping periods: one slow reply
/// on a busy machine does not wake every group it leads.
pub const DEAD_AFTER: Duration = Duration::from_millis(400);

#[derive(Default)]
struct Life {
    /// Last time anything arrived from the peer (ping reply or Raft batch).
    heard: Option<Instant>,
    /// The groups it led at its last ping reply, sorted.
    leading: Vec<u16>,
    /// When the peer was last heard from again after being down (or for the first time).
    revived: Option<Instant>,
}

/// What this node knows of its peers' liveness. Shared by the pingers, the peer service
/// (incoming batches) and the hibernation controller.
#[derive(Default)]
pub struct Liveness {
    peers: Mutex<HashMap<u64, Life>>,
}

impl Liveness {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<u64, Life>) -> R) -> R {
        f(&mut self.peers.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Something arrived from `id`.
    pub fn heard(&self, id: u64) {
        let now = Instant::now();
        self.with(|peers| {
            let life = peers.entry(id).or_default();
            let was_down = life.heard.is_none_or(|h| now.duration_since(h) >= DEAD_AFTER);
            if was_down {
                life.revived = Some(now);
            }
            life.heard = Some(now);
        });
    }

    /// `id` answered a ping, leading `leading`.
    pub fn pinged(&self, id: u64, mut leading: Vec<u16>) {
        leading.sort_unstable();
        self.heard(id);
        self.with(|peers| {
            if let Some(life) = peers.get_mut(&id) {
                life.leading = leading;
            }
        });
    }

    /// How long since `id` was last heard from; `None` if never.
    pub fn silent_for(&self, id: u64) -> Option<Duration> {
        self.with(|peers| peers.get(&id).and_then(|l| l.heard).map(|h| h.elapsed()))
    }

    pub fn is_alive(&self, id: u64) -> bool {
        self.silent_for(id).is_some_and(|s| s < DEAD_AFTER)
    }

    /// True when `id` is up and said at its last ping that it leads `group`.
    pub fn leads(&self, id: u64, group: u16) -> bool {
        self.with(|peers| {
            peers.get(&id).is_some_and(|l| {
                l.heard.is_some_and(|h| h.elapsed() < DEAD_AFTER)
                    && l.leading.binary_search(&group).is_ok()
            })
        })
    }

    /// True when some peer came (back) up within `window`: the groups this node leads then
    /// heartbeat for a while, so a restarted follower learns its leaders before its own
    /// election timer fires.
    pub fn revived_within(&self, window: Duration) -> bool {
        self.with(|peers| peers.values().any(|l| l.revived.is_some_and(|r| r.elapsed() < window)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_peer_is_down_and_leads_nothing() {
        let l = Liveness::default();
        assert!(!l.is_alive(2));
        assert!(!l.leads(2, 0));
        assert_eq!(l.silent_for(2), None);
        assert!(!l.revived_within(Duration::from_secs(1)));
    }

    #[test]
    fn ping_records_leadership_and_revival() {
        let l = Liveness::default();
        l.pinged(2, vec![5, 1, 3]);
        assert!(l.is_alive(2));
        assert!(l.leads(2, 3));
        assert!(!l.leads(2, 4));
        assert!(!l.leads(3, 3));
        assert!(l.revived_within(Duration::from_secs(1)));
        // A later ping replaces the set: a group it stepped down from is no longer trusted.
        l.pinged(2, vec![1]);
        assert!(!l.leads(2, 3));
    }

    #[test]
    fn a_batch_counts_as_heard_but_not_as_leading() {
        let l = Liveness::default();
        l.heard(7);
        assert!(l.is_alive(7));
        assert!(!l.leads(7, 0));
    }
}
