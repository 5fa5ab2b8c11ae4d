//! Letting a session's next request on a stream start once this one holds its place.
//!
//! The edge runs a session's requests on one stream one after another, so that they take
//! effect in the order the client sent them (its `ws::order`). A request holds its place as
//! soon as the stream's actor has queued it: the actor's mailbox is FIFO and the actor
//! proposes in mailbox order, ending a turn after any command that changes what later ones
//! are checked against. So on a single node the owner lets the next request go right then
//! ([`OrderRelease::release`]), and a client pipelining posts to one stream fills whole Raft
//! entries instead of committing one post per round trip.
//!
//! In a cluster a request queued at one leader may still be retried at the next one after a
//! failover, behind a later request that got there first; there the edge lets the next
//! request go only when this one is done.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

type Release = Box<dyn FnOnce() + Send>;

/// A request's hold on its stream's queue; clones share it. Empty (a no-op) for requests that
/// no successor waits on.
#[derive(Clone, Default)]
pub struct OrderRelease(Option<Arc<Mutex<Option<Release>>>>);

impl OrderRelease {
    /// A hold whose release runs `release` once.
    pub fn new(release: impl FnOnce() + Send + 'static) -> OrderRelease {
        OrderRelease(Some(Arc::new(Mutex::new(Some(Box::new(release))))))
    }

    /// Lets the next request go. Only the first call of any clone does anything.
    pub fn release(&self) {
        let Some(slot) = &self.0 else { return };
        // A panicked holder could only have been between `take` and the call: whole either way.
        let release = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(release) = release {
            release();
        }
    }
}

impl fmt::Debug for OrderRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "OrderRelease(held)" } else { "OrderRelease(none)" })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn release_runs_once_across_clones() {
        let count = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&count);
        let hold = OrderRelease::new(move || {
            c.fetch_add(1, Ordering::Relaxed);
        });
        let copy = hold.clone();
        copy.release();
        hold.release();
        copy.release();
        assert_eq!(count.load(Ordering::Relaxed), 1);
        OrderRelease::default().release();
    }
}
