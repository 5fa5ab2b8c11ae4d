//! One stream's feed on this edge: the messages its upstream listen delivered lately (a ring),
//! and the sessions attached to it (sinks).
//!
//! The upstream task calls [`Feed::publish`] with each committed message in ordinal order; the
//! feed renders nothing, it hands the same bytes to every sink's outbound queue without
//! waiting. A sink whose queue is full is detached and told where to resync from; the others
//! and the upstream never wait for it.
//!
//! Invariant: the ring holds consecutive ordinals ending at `last`, so a session whose next
//! ordinal is at least the ring's first is served from the ring under the same lock that
//! attaches it, and nothing falls between the backlog and live delivery.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use chorus_api::{Delivered, Principal, Relayed, same_session};
use chorus_types::StreamKey;
use tokio::sync::{oneshot, watch};

use crate::metrics::{DELIVERIES, EPHEMERALS_DROPPED};
use crate::ws::outbound::{Kick, Offered, Outbound};
use crate::ws::wire;

/// Why a sink was detached.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The session fell behind (or the feed could not go on): it must fetch from `from`.
    Resync(u64),
    /// The feed restarted while the session was still catching up: resync from wherever the
    /// session got to.
    Restarted,
    /// The session is gone.
    SessionGone,
}

/// Where the upstream listen stands.
#[derive(Clone, Debug)]
pub(crate) enum Phase {
    Opening,
    Live,
    /// It was refused for good; a new feed is made for the next listen.
    Failed,
}

/// A committed message as this edge sends it: ordinal and the encoded WebSocket frame
/// (shared by sessions).
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) ordinal: u64,
    pub(crate) frame: Bytes,
}

impl Entry {
    pub(crate) fn from_delivered(d: &Delivered) -> Entry {
        // One copy per message per edge; every session then writes these bytes.
        Entry { ordinal: d.record.ordinal, frame: wire::text(&d.frame) }
    }
}

/// One attached session listen.
pub(crate) struct Sink {
    pub(crate) out: Outbound,
    pub(crate) session: u64,
    /// Who listens: checked again when the stream's access changes.
    pub(crate) principal: Principal,
    /// Messages up to here already reached the session (from the backlog); `None` while it
    /// is still catching up, when it gets only ephemerals.
    pub(crate) skip_upto: Option<u64>,
    pub(crate) end: oneshot::Sender<Ended>,
}

#[derive(Default)]
pub(crate) struct State {
    /// The last ordinal received from upstream.
    pub(crate) last: u64,
    pub(crate) ring: VecDeque<Entry>,
    pub(crate) sinks: HashMap<u64, Sink>,
    pub(crate) next_sink: u64,
    /// Session listens using this feed (attached or catching up); at zero the feed closes.
    pub(crate) users: usize,
    /// Bumped by each access notice. A listen authorised before a bump must be authorised
    /// again before it attaches: the check that follows the notice did not include it.
    pub(crate) access_generation: u64,
}

impl State {
    /// The ordinal of the ring's first entry (`last + 1` when empty).
    pub(crate) fn ring_first(&self) -> u64 {
        self.last + 1 - self.ring.len() as u64
    }

    /// Entries after `after`, oldest first.
    pub(crate) fn ring_after(&self, after: u64) -> impl Iterator<Item = &Entry> {
        let skip = after.saturating_add(1).saturating_sub(self.ring_first()) as usize;
        self.ring.iter().skip(skip)
    }
}

pub(crate) struct Feed {
    pub(crate) key: StreamKey,
    state: Mutex<State>,
    phase: watch::Sender<Phase>,
    ring_len: usize,
}

impl Feed {
    pub(crate) fn new(key: StreamKey, ring_len: usize) -> Feed {
        Feed {
            key,
            state: Mutex::default(),
            phase: watch::channel(Phase::Opening).0,
            ring_len: ring_len.max(1),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Every update keeps the state consistent, so a panicked holder leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    pub(crate) fn is_live(&self) -> bool {
        matches!(*self.phase.borrow(), Phase::Live)
    }

    /// The upstream listen ended and is being opened again: new listens wait (their `ok`
    /// promises every later ephemeral, which only an open upstream delivers). Set under the
    /// state lock, which joining sessions hold while they check it.
    pub(crate) fn reopening(&self) {
        let _st = self.lock();
        self.phase.send_replace(Phase::Opening);
    }

    /// The upstream listen is open again.
    pub(crate) fn resumed(&self) {
        let _st = self.lock();
        self.phase.send_replace(Phase::Live);
    }

    pub(crate) fn failed(&self) -> bool {
        matches!(*self.phase.borrow(), Phase::Failed)
    }

    /// The upstream listen opened for the first time; `count` is the stream's messageCount.
    pub(crate) fn opened(&self, count: u64) {
        let mut st = self.lock();
        st.last = count;
        self.phase.send_replace(Phase::Live);
    }

    /// The last ordinal received from upstream.
    pub(crate) fn last(&self) -> u64 {
        self.lock().last
    }

    /// Queues a committed message for every attached session; returns the sessions to write
    /// to once the caller holds no lock (see [`Kick`]).
    pub(crate) fn publish(&self, delivered: &Delivered) -> Vec<Kick> {
        let ordinal = delivered.record.ordinal;
        let mut st = self.lock();
        if ordinal <= st.last {
            return Vec::new();
        }
        if ordinal != st.last + 1 {
            // The upstream listen promises no gaps; should one appear anyway, nobody may skip
            // it silently: every session resyncs from the first missing ordinal.
            tracing::warn!(stream = %self.key, last = st.last, ordinal, "gap in upstream feed");
            end_all(&mut st);
            st.ring.clear();
            st.last = ordinal - 1;
        }
        let entry = Entry::from_delivered(delivered);
        st.last = ordinal;
        if st.ring.len() >= self.ring_len {
            st.ring.pop_front();
        }
        st.ring.push_back(entry.clone());
        let mut kicks = Vec::with_capacity(st.sinks.len());
        let mut ended = Vec::new();
        for (id, sink) in &st.sinks {
            if sink.skip_upto.is_none_or(|skip| ordinal <= skip) {
                continue;
            }
            match sink.out.offer(&entry.frame) {
                Offered::Queued => kicks.push(sink.out.kicker()),
                Offered::Full => ended.push((*id, Ended::Resync(ordinal))),
                Offered::SessionClosed => ended.push((*id, Ended::SessionGone)),
            }
        }
        for (id, why) in ended {
            if let Some(sink) = st.sinks.remove(&id) {
                let _ = sink.end.send(why);
            }
        }
        DELIVERIES.inc_by(kicks.len() as u64);
        kicks
    }

    /// Queues an ephemeral for every attached session but its sender (best effort: a full
    /// queue drops it); returns the sessions to write to.
    pub(crate) fn relay(&self, relayed: &Relayed) -> Vec<Kick> {
        let frame = wire::text(&relayed.frame);
        let mut st = self.lock();
        let mut kicks = Vec::with_capacity(st.sinks.len());
        let mut gone = Vec::new();
        for (id, sink) in &st.sinks {
            if relayed.origin.is_some_and(|o| same_session(o, sink.session)) {
                continue;
            }
            match sink.out.offer(&frame) {
                Offered::Queued => kicks.push(sink.out.kicker()),
                Offered::Full => EPHEMERALS_DROPPED.inc(),
                Offered::SessionClosed => gone.push(*id),
            }
        }
        for id in gone {
            if let Some(sink) = st.sinks.remove(&id) {
                let _ = sink.end.send(Ended::SessionGone);
            }
        }
        kicks
    }

    /// The upstream cannot resume where it was (the stream has fewer messages than this edge
    /// delivered, which a wiped cluster would cause): every session resyncs, the ring is
    /// dropped and the feed follows the stream from `count`.
    pub(crate) fn restart_at(&self, count: u64) {
        let mut st = self.lock();
        end_all(&mut st);
        st.ring.clear();
        st.last = count;
    }

    /// The upstream was refused for good: every session resyncs (and, listening again, gets
    /// the error from the owner).
    pub(crate) fn fail(&self) {
        let mut st = self.lock();
        end_all(&mut st);
        drop(st);
        self.phase.send_replace(Phase::Failed);
    }

    /// An access notice arrived: bumps the access generation and returns the distinct
    /// principals of the attached sessions (the app's excepted: it may read everything), all
    /// under one lock, so a session either is among them or attaches after the bump and is
    /// authorised again ([`super::FeedUse::join`]).
    pub(crate) fn access_changed(&self) -> Vec<Principal> {
        let mut st = self.lock();
        st.access_generation += 1;
        let mut seen = std::collections::HashSet::new();
        st.sinks
            .values()
            .filter(|sink| sink.principal != Principal::App && seen.insert(&sink.principal))
            .map(|sink| sink.principal.clone())
            .collect()
    }

    pub(crate) fn access_generation(&self) -> u64 {
        self.lock().access_generation
    }

    /// Detaches the sessions of `shut_out`, each told to resync from the first message it
    /// lacks (fetching it then answers why: `not_found` or `forbidden`).
    pub(crate) fn shut_out(&self, shut_out: &std::collections::HashSet<Principal>) {
        let mut st = self.lock();
        let last = st.last;
        for (_, sink) in st.sinks.extract_if(|_, sink| shut_out.contains(&sink.principal)) {
            let why = ended_at(last, &sink);
            let _ = sink.end.send(why);
        }
    }

    /// Detaches a sink (its session stopped listening).
    pub(crate) fn detach(&self, sink: u64) {
        self.lock().sinks.remove(&sink);
    }
}

/// Detaches every sink, each told to resync from the first message it lacks.
fn end_all(st: &mut State) {
    let last = st.last;
    for (_, sink) in st.sinks.drain() {
        let why = ended_at(last, &sink);
        let _ = sink.end.send(why);
    }
}

/// Where a detached sink resumes: after what it got, or wherever its catch-up got to.
fn ended_at(last: u64, sink: &Sink) -> Ended {
    match sink.skip_upto {
        Some(skip) => Ended::Resync(last.max(skip) + 1),
        None => Ended::Restarted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_positions() {
        let mut st = State { last: 10, ..State::default() };
        assert_eq!(st.ring_first(), 11);
        assert_eq!(st.ring_after(3).count(), 0);
        for ordinal in 8..=10 {
            st.ring.push_back(Entry { ordinal, frame: Bytes::from_static(b"x") });
        }
        assert_eq!(st.ring_first(), 8);
        let after: Vec<u64> = st.ring_after(8).map(|e| e.ordinal).collect();
        assert_eq!(after, vec![9, 10]);
        assert_eq!(st.ring_after(2).count(), 3);
        assert_eq!(st.ring_after(10).count(), 0);
        assert_eq!(st.ring_after(99).count(), 0);
    }
}
