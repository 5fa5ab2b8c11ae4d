//! Fan-out: one upstream listen per stream per edge, shared by every local session.
//!
//! ```text
//!  owner ──(one listen per stream)──▶ upstream task ──▶ Feed: ring + sinks ──offer──▶ session queues
//!                                                          ▲
//!  session listen ─ authorize ─ `ok` ─ backlog (history) ──┘ attach under the feed's lock
//! ```
//!
//! A session's listen is authorised on its own (`authorize_listen`), then gets the messages
//! after its `since`: from the stream's history (read with the session's own rights) until
//! the feed's ring covers the rest, then from the ring and live, attached under the same lock
//! that publishes, so there is no gap and no duplicate at the switch. A committed message
//! reaches the edge once, is rendered once, and its bytes are shared by every session.
//!
//! The feed closes when its last session listen ends; the upstream follows owner leader
//! changes and broken connections by listening again from the last ordinal it has
//! (`upstream`), so sessions see only a delay.

mod feed;
mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chorus_api::{Caller, HistoryQuery, Order, StreamService};
use chorus_types::{ApiError, ErrorCode, StreamKey};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

pub(crate) use feed::Ended;
use feed::{Entry, Feed, Phase, Sink};

use crate::metrics::FEEDS;
use crate::ws::outbound::{Offered, Outbound};
use crate::ws::wire;

/// Messages of history read per request while a session catches up.
const BACKLOG_PAGE: u64 = 1000;

pub(crate) struct Fanout {
    service: Arc<dyn StreamService>,
    feeds: Mutex<HashMap<StreamKey, (Arc<Feed>, AbortHandle)>>,
    ring_len: usize,
    /// See `EdgeConfig::listen_timeout`.
    pub(crate) listen_timeout: Duration,
}

impl Fanout {
    pub(crate) fn new(
        service: Arc<dyn StreamService>,
        ring_len: usize,
        listen_timeout: Duration,
    ) -> Arc<Fanout> {
        Arc::new(Fanout { service, feeds: Mutex::default(), ring_len, listen_timeout })
    }

    fn feeds(&self) -> MutexGuard<'_, HashMap<StreamKey, (Arc<Feed>, AbortHandle)>> {
        self.feeds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The feed of `key`, opened if needed, counted as used until the returned guard drops.
    pub(crate) fn acquire(self: &Arc<Self>, key: &StreamKey) -> FeedUse {
        let mut feeds = self.feeds();
        let feed = match feeds.get(key) {
            Some((feed, _)) if !feed.failed() => Arc::clone(feed),
            _ => {
                let feed = Arc::new(Feed::new(key.clone(), self.ring_len));
                let task = tokio::spawn(upstream::run(Arc::clone(&feed), self.service.clone()));
                if let Some((_, old)) =
                    feeds.insert(key.clone(), (feed.clone(), task.abort_handle()))
                {
                    old.abort();
                } else {
                    FEEDS.inc();
                }
                feed
            }
        };
        feed.lock().users += 1;
        FeedUse { fanout: Arc::clone(self), feed, sink: None, ended: None }
    }

    fn release(&self, feed: &Arc<Feed>) {
        let mut feeds = self.feeds();
        let mut st = feed.lock();
        st.users = st.users.saturating_sub(1);
        if st.users > 0 {
            return;
        }
        drop(st);
        // A failed feed may already have been replaced by a newer one for the same stream.
        if feeds.get(&feed.key).is_some_and(|(current, _)| Arc::ptr_eq(current, feed))
            && let Some((_, task)) = feeds.remove(&feed.key)
        {
            task.abort();
            FEEDS.dec();
        }
    }
}

/// Who is listening, for the backlog reads and the delivery.
pub(crate) struct Listener<'a> {
    pub(crate) caller: &'a Caller,
    pub(crate) session: u64,
    pub(crate) out: &'a Outbound,
}

/// What a session listen does next while catching up.
enum Step {
    /// Read history up to this ordinal (the ring starts after it).
    Backlog(u64),
    /// Send these ring entries, waiting for queue room.
    Push(Vec<Entry>),
    Attached,
}

/// How [`FeedUse::join`] went.
pub(crate) enum Joined {
    Yes,
    SessionGone,
    /// A later listen or unlisten of the stream was read meanwhile.
    Superseded,
    /// The stream's access changed after the listen was authorised: authorise it again.
    AccessChanged,
    Failed(ApiError),
}

/// A session listen's hold on a feed; dropping it detaches the session.
pub(crate) struct FeedUse {
    fanout: Arc<Fanout>,
    feed: Arc<Feed>,
    sink: Option<u64>,
    ended: Option<oneshot::Receiver<Ended>>,
}

impl Drop for FeedUse {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            self.feed.detach(sink);
        }
        self.fanout.release(&self.feed);
    }
}

impl FeedUse {
    /// Waits until the feed's upstream listen is open at the owner, then — under the feed's
    /// lock, and only if the feed is still open and `still_current` — queues the listen's
    /// `ok` and adds the session for ephemerals: no event comes before the `ok`, and every
    /// ephemeral published after it reaches the session. Messages follow once
    /// [`attach`](Self::attach) has caught up.
    pub(crate) async fn join(
        &mut self,
        who: &Listener<'_>,
        ok: String,
        still_current: impl Fn() -> bool,
        authorised_at: u64,
        deadline: tokio::time::Instant,
    ) -> Joined {
        let mut ok = Some(ok);
        loop {
            if let Err(error) = self.live_by(deadline).await {
                return Joined::Failed(error);
            }
            let mut st = self.feed.lock();
            // The upstream may have started listening again meanwhile (owner failover): then
            // ephemerals could be missed, so wait for it.
            if !self.feed.is_live() {
                continue;
            }
            if !still_current() {
                return Joined::Superseded;
            }
            if st.access_generation != authorised_at {
                return Joined::AccessChanged;
            }
            if !who.out.force(&ok.take().unwrap_or_default()) {
                return Joined::SessionGone;
            }
            let (end, ended) = oneshot::channel();
            let id = st.next_sink;
            st.next_sink += 1;
            let sink = Sink {
                out: who.out.clone(),
                session: who.session,
                principal: who.caller.principal.clone(),
                skip_upto: None,
                end,
            };
            st.sinks.insert(id, sink);
            drop(st);
            who.out.kick();
            self.sink = Some(id);
            self.ended = Some(ended);
            return Joined::Yes;
        }
    }

    /// Waits until the feed's upstream listen is open at the owner. A listen reads the
    /// [`access_generation`](Self::access_generation) after this and only then authorises:
    /// every access change after the upstream opened reaches the feed as a notice, and every
    /// one before is in the authorisation.
    pub(crate) async fn opened(&self, deadline: tokio::time::Instant) -> Result<(), ApiError> {
        self.live_by(deadline).await
    }

    /// Whether the owner refused the feed's upstream listen (rather than not answering yet):
    /// then the caller's own authorisation says why.
    pub(crate) fn refused(&self) -> bool {
        self.feed.failed()
    }

    async fn live_by(&self, deadline: tokio::time::Instant) -> Result<(), ApiError> {
        let mut phase = self.feed.phase();
        let opened = phase.wait_for(|p| !matches!(p, Phase::Opening));
        match tokio::time::timeout_at(deadline, opened).await {
            Ok(Ok(p)) if matches!(*p, Phase::Live) => Ok(()),
            Ok(_) => {
                Err(ApiError::new(ErrorCode::Unavailable, "the stream's owner refused the listen"))
            }
            Err(_) => Err(ApiError::new(
                ErrorCode::Unavailable,
                "the stream's owner did not answer in time",
            )),
        }
    }

    /// The feed's access generation: read it (once [`opened`](Self::opened)) before
    /// authorising a listen, and pass it to [`join`](Self::join).
    pub(crate) fn access_generation(&self) -> u64 {
        self.feed.access_generation()
    }

    /// Delivers every message after `last` to the listener, backlog first, then lets live
    /// messages through. Call after [`join`](Self::join).
    pub(crate) async fn attach(&mut self, who: &Listener<'_>, mut last: u64) -> Result<(), Ended> {
        loop {
            if self.feed.failed() {
                // Refused upstream: a new listen finds out why.
                return Err(Ended::Resync(last + 1));
            }
            match self.step(who, &mut last)? {
                Step::Attached => {
                    who.out.kick();
                    return Ok(());
                }
                Step::Push(pending) => {
                    // More than the queue takes at once: send these waiting, then look again
                    // (the ring moves on meanwhile).
                    for entry in pending {
                        if !who.out.push(entry.frame).await {
                            return Err(Ended::SessionGone);
                        }
                        last = entry.ordinal;
                    }
                }
                Step::Backlog(upto) => last = self.backlog(who, last, upto).await?,
            }
        }
    }

    /// What ended the attachment: waits for it.
    pub(crate) async fn ended(&mut self) -> Ended {
        match self.ended.take() {
            Some(ended) => ended.await.unwrap_or(Ended::SessionGone),
            None => Ended::SessionGone,
        }
    }

    /// Under the feed's lock, one step of the catch-up: let live messages through when what
    /// the session lacks is in the ring and fits its queue.
    fn step(&mut self, who: &Listener<'_>, last: &mut u64) -> Result<Step, Ended> {
        let mut st = self.feed.lock();
        let Some(sink) = self.sink.filter(|id| st.sinks.contains_key(id)) else {
            // Detached while catching up: the feed restarted, or the session closed.
            return Err(match self.ended.as_mut().map(|e| e.try_recv()) {
                Some(Ok(Ended::Resync(from))) => Ended::Resync(from.min(*last + 1)),
                Some(Ok(Ended::Restarted)) => Ended::Resync(*last + 1),
                _ => Ended::SessionGone,
            });
        };
        if *last + 1 < st.ring_first() {
            return Ok(Step::Backlog(st.ring_first() - 1));
        }
        let pending: Vec<Entry> = st.ring_after(*last).cloned().collect();
        if pending.len() > who.out.room() {
            return Ok(Step::Push(pending));
        }
        for entry in &pending {
            match who.out.offer(&entry.frame) {
                Offered::Queued => *last = entry.ordinal,
                Offered::Full => return Err(Ended::Resync(*last + 1)),
                Offered::SessionClosed => return Err(Ended::SessionGone),
            }
        }
        let skip_upto = (*last).max(st.last);
        if let Some(sink) = st.sinks.get_mut(&sink) {
            sink.skip_upto = Some(skip_upto);
        }
        Ok(Step::Attached)
    }

    /// Sends history `last+1 ..= upto` (one page at most); returns the new `last`.
    async fn backlog(&self, who: &Listener<'_>, last: u64, upto: u64) -> Result<u64, Ended> {
        let query = HistoryQuery {
            min: Some(last + 1),
            max: Some(upto),
            limit: Some(BACKLOG_PAGE),
            order: Some(Order::Asc),
        };
        let page = match self.fanout.service.messages(who.caller, &self.feed.key, query).await {
            Ok(page) if !page.is_empty() => page,
            // Access revoked, owner unreachable, history gone: the client resyncs and, asking
            // again, learns why.
            Ok(_) | Err(_) => return Err(Ended::Resync(last + 1)),
        };
        let mut last = last;
        for m in page {
            if m.ordinal != last + 1 {
                return Err(Ended::Resync(last + 1));
            }
            if !who.out.push(wire::text(&chorus_api::wire::message_event(&m))).await {
                return Err(Ended::SessionGone);
            }
            last = m.ordinal;
        }
        Ok(last)
    }
}
