//! A session's requests that act on the same stream take effect in the order it sent them.
//!
//! A session runs many requests at once, and two of them racing to the same stream's owner
//! could land either way round: a pipelined `join` then `leave` could leave the user joined,
//! and two quick posts could take each other's ordinals. So each request on a stream waits
//! for the one the session sent before it on that stream to finish; requests on different
//! streams still run side by side. The queue position is taken when the frame is read, before
//! any task runs, since tasks start in no particular order.
//!
//! A write need not wait for the one before it to be done, only for it to hold its place at the
//! stream's actor, whose queue keeps the order requests reach it in: the owner releases a
//! request's turn once it is queued there (`chorus_api::order`), and at the latest the
//! request's end does. A read or an ephemeral waits for the request before it to be done, so
//! that it sees what the session asked for before it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chorus_api::order::OrderRelease;
use chorus_types::StreamKey;
use tokio::sync::oneshot;

/// What a request's successor on its stream may wait for.
struct Tail {
    ticket: u64,
    /// Fires when the request holds its place in the stream's actor, or is done.
    queued: oneshot::Receiver<()>,
    /// Fires when the request is done.
    finished: oneshot::Receiver<()>,
}

/// The last request queued per stream, and what its successor waits on.
#[derive(Default)]
pub(crate) struct StreamOrder {
    tails: Mutex<HashMap<StreamKey, Tail>>,
    next: std::sync::atomic::AtomicU64,
}

/// A request's place in its stream's queue.
pub(crate) struct Turn {
    key: StreamKey,
    ticket: u64,
    previous: Option<oneshot::Receiver<()>>,
    /// Released when the owner has queued the request at the stream's actor, or when the
    /// request is done; dropped with every clone (its task dropped) all the same.
    queued: OrderRelease,
    /// Dropped when the request and every one before it are done (or its task is dropped).
    finished: oneshot::Sender<()>,
    /// A write's predecessor's `finished`: a write may be done before the write it followed
    /// (refused, or failing before the actor, while that one still commits), and a read behind
    /// it must wait for both.
    earlier: Option<oneshot::Receiver<()>>,
}

impl Turn {
    /// The hold to hand the owner with the request.
    pub(crate) fn hold(&self) -> OrderRelease {
        self.queued.clone()
    }
}

impl StreamOrder {
    /// Takes the next place in `key`'s queue. A request the stream's actor queues
    /// (`at_actor`: a write) waits until the one before it holds its place there, since the
    /// actor keeps that order; any other (a read, an ephemeral) until the one before it is
    /// done, so that it sees what the session asked for before it.
    pub(crate) fn queue(&self, key: StreamKey, at_actor: bool) -> Turn {
        let ticket = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (queued, queued_rx) = oneshot::channel();
        let (finished, finished_rx) = oneshot::channel();
        let tail = Tail { ticket, queued: queued_rx, finished: finished_rx };
        let mut tails = self.tails.lock().unwrap_or_else(|p| p.into_inner());
        let (previous, earlier) = match tails.insert(key.clone(), tail) {
            Some(before) if at_actor => (Some(before.queued), Some(before.finished)),
            Some(before) => (Some(before.finished), None),
            None => (None, None),
        };
        Turn {
            key,
            ticket,
            previous,
            queued: OrderRelease::new(move || drop(queued)),
            finished,
            earlier,
        }
    }

    /// Waits until the request queued before `turn` on its stream lets it go.
    pub(crate) async fn wait(turn: &mut Turn) {
        if let Some(previous) = turn.previous.take() {
            // An error only means the previous request's task is gone: it is done as well.
            let _ = previous.await;
        }
    }

    /// Ends `turn`: forgets the stream when nothing was queued after it.
    pub(crate) fn finish(self: &Arc<Self>, turn: Turn) {
        let Turn { key, ticket, queued, finished, earlier, .. } = turn;
        queued.release();
        if let Some(mut earlier) = earlier
            && matches!(earlier.try_recv(), Err(oneshot::error::TryRecvError::Empty))
        {
            // Not done with the request before it yet: report done once that one is. The
            // stream stays in the queue until then, or a request queued meanwhile would find
            // no one to wait for.
            let order = Arc::clone(self);
            tokio::spawn(async move {
                let _ = earlier.await;
                drop(finished);
                order.forget(&key, ticket);
            });
            return;
        }
        drop(finished);
        self.forget(&key, ticket);
    }

    /// Forgets the stream when nothing was queued after `ticket`.
    fn forget(&self, key: &StreamKey, ticket: u64) {
        let mut tails = self.tails.lock().unwrap_or_else(|p| p.into_inner());
        if tails.get(key).is_some_and(|tail| tail.ticket == ticket) {
            tails.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use chorus_types::{PublisherId, StreamName};

    use super::*;

    fn key(name: &str) -> StreamKey {
        StreamKey::new(PublisherId::new("alice").unwrap(), StreamName::new(name).unwrap())
    }

    /// `true` when the turn is still not allowed to go after a short while.
    async fn still_waiting(turn: &mut Turn) -> bool {
        let wait = StreamOrder::wait(turn);
        tokio::time::timeout(std::time::Duration::from_millis(20), wait).await.is_err()
    }

    #[tokio::test]
    async fn requests_on_one_stream_run_in_queue_order_and_others_do_not_wait() {
        let order = Arc::new(StreamOrder::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Queued in order 0..8, started in reverse: they must still run 0..8.
        let turns: Vec<Turn> = (0..8).map(|_| order.queue(key("Chat/a"), true)).collect();
        for (i, mut turn) in turns.into_iter().enumerate().rev() {
            let (order, log) = (Arc::clone(&order), Arc::clone(&log));
            tasks.push(tokio::spawn(async move {
                StreamOrder::wait(&mut turn).await;
                tokio::task::yield_now().await;
                log.lock().unwrap().push(i);
                order.finish(turn);
            }));
        }
        // Another stream's request does not wait for them.
        let mut other = order.queue(key("Chat/b"), true);
        StreamOrder::wait(&mut other).await;
        order.finish(other);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), (0..8).collect::<Vec<_>>());
        assert!(order.tails.lock().unwrap().is_empty(), "finished streams are forgotten");
    }

    #[tokio::test]
    async fn a_released_request_lets_the_next_one_go_before_it_finishes() {
        let order = Arc::new(StreamOrder::default());
        let first = order.queue(key("Chat/a"), true);
        let mut second = order.queue(key("Chat/a"), true);
        let mut third = order.queue(key("Chat/a"), true);
        first.hold().release();
        StreamOrder::wait(&mut second).await;
        assert!(still_waiting(&mut third).await, "the third waits for the second, not the first");
        order.finish(second);
        StreamOrder::wait(&mut third).await;
        order.finish(first);
        order.finish(third);
        // The chain of finishes runs on spawned tasks.
        for _ in 0..1000 {
            if order.tails.lock().unwrap().is_empty() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the stream was never forgotten");
    }

    #[tokio::test]
    async fn a_read_waits_for_the_write_before_it_to_finish() {
        let order = Arc::new(StreamOrder::default());
        let write = order.queue(key("Chat/a"), true);
        let mut read = order.queue(key("Chat/a"), false);
        write.hold().release();
        assert!(still_waiting(&mut read).await, "queued is not enough for a read");
        order.finish(write);
        StreamOrder::wait(&mut read).await;
        order.finish(read);
    }

    #[tokio::test]
    async fn a_read_waits_for_every_write_before_it_even_one_still_committing() {
        let order = Arc::new(StreamOrder::default());
        let slow = order.queue(key("Chat/a"), true);
        let mut refused = order.queue(key("Chat/a"), true);
        let mut read = order.queue(key("Chat/a"), false);
        slow.hold().release();
        StreamOrder::wait(&mut refused).await;
        order.finish(refused);
        assert!(still_waiting(&mut read).await, "the first write is still committing");
        order.finish(slow);
        StreamOrder::wait(&mut read).await;
        order.finish(read);
    }

    #[tokio::test]
    async fn a_dropped_request_lets_the_next_one_go() {
        let order = Arc::new(StreamOrder::default());
        let first = order.queue(key("Chat/a"), true);
        let mut second = order.queue(key("Chat/a"), true);
        drop(first);
        StreamOrder::wait(&mut second).await;
        order.finish(second);
        assert!(order.tails.lock().unwrap().is_empty());
    }
}
