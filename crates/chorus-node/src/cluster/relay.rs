//! `listen` in a cluster: opened on the shard's leader, and carried across leader changes.
//!
//! When this node leads the shard, the listen is the node's own (its hub keeps receiving
//! committed messages even if it later becomes a follower, since every replica applies the
//! log). Otherwise the leader streams the listen over `Owner.Listen`, and a relay task here
//! passes its events on while remembering the last ordinal. If that stream breaks (the leader
//! died or stepped down), the relay opens the listen again, on whichever node leads now, with
//! `since` = that ordinal: the session sees a short pause, then the next ordinal — no gap, no
//! duplicate.

use std::sync::Arc;
use std::time::Duration;

use chorus_api::{
    Caller, EventStream, ListenEvent, Listening, Relayed, ServiceError, StreamService,
};
use chorus_proto::pb;
use chorus_types::{ErrorCode, StreamKey};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::call::WireCaller;
use super::owner::{ListenCall, ListenItem};
use super::router::{Router, Target};
use crate::error::err;
use crate::hub::delivered;

/// Events buffered between the leader's stream and the session.
const QUEUE: usize = 256;

/// Why opening a listen failed. Listens are reads, so unlike a forwarded write there is no
/// "outcome unknown": either another attempt may succeed, or the caller must see the error.
enum OpenFailure {
    /// No leader there, or it could not be reached: try again on the current leader.
    Retry(ServiceError),
    /// Refused for good (forbidden, not found, …).
    Final(ServiceError),
}

/// Opens the listen on `target`, giving up at `deadline`: a peer that accepts the call but
/// never answers (stuck, or partitioned after the connection was made) must not hold the
/// listen, or a relay reopening it after a failover, for good.
async fn open(
    router: &Router,
    target: Target,
    caller: &Caller,
    key: &StreamKey,
    since: Option<u64>,
    deadline: Instant,
) -> Result<Listening, OpenFailure> {
    let id = match target {
        Target::Local => {
            return router.node.listen(caller, key, since).await.map_err(|e| {
                if e.error.code == ErrorCode::NotLeader {
                    OpenFailure::Retry(e)
                } else {
                    OpenFailure::Final(e)
                }
            });
        }
        Target::Remote(id) => (id, false),
        // A node that holds the shard opens it on the leader for us.
        Target::Holder(id) => (id, true),
    };
    let (id, route) = id;
    let mut client = router.owner_client(id).map_err(OpenFailure::Retry)?;
    let mut wire = WireCaller::from(caller);
    wire.session = router.tag_session(caller.session);
    let body = serde_json::to_vec(&ListenCall { caller: wire, key: key.clone(), since, route })
        .map_err(|e| OpenFailure::Final(err(ErrorCode::Internal, &e.to_string())))?;
    let unreachable =
        || OpenFailure::Retry(err(ErrorCode::Unavailable, "stream owner unreachable"));
    let opening = client.listen(pb::OwnerRequest { call: body });
    let mut stream = match tokio::time::timeout_at(deadline, opening).await {
        Ok(Ok(response)) => response.into_inner(),
        _ => return Err(unreachable()),
    };
    let first = match tokio::time::timeout_at(deadline, stream.message()).await {
        Ok(Ok(Some(ev))) => serde_json::from_slice::<ListenItem>(&ev.event)
            .map_err(|e| OpenFailure::Final(err(ErrorCode::Internal, &e.to_string())))?,
        _ => return Err(unreachable()),
    };
    let (recovered, message_count) = match first {
        ListenItem::Started { recovered, message_count } => (recovered, message_count),
        ListenItem::Failed { error } if error.code == ErrorCode::NotLeader => {
            return Err(OpenFailure::Retry(error.into()));
        }
        ListenItem::Failed { error } => return Err(OpenFailure::Final(error.into())),
        _ => {
            return Err(OpenFailure::Final(err(
                ErrorCode::Internal,
                "listen stream began without a reply",
            )));
        }
    };
    let router_for_events = router.self_arc();
    let events = stream.take_while(|r| std::future::ready(r.is_ok())).filter_map(move |r| {
        let ev = r.ok().and_then(|ev| serde_json::from_slice::<ListenItem>(&ev.event).ok());
        std::future::ready(ev.and_then(|item| to_event(router_for_events.as_deref(), item)))
    });
    Ok(Listening { recovered, message_count, events: Box::pin(events) })
}

pub(super) fn to_event(router: Option<&Router>, item: ListenItem) -> Option<ListenEvent> {
    match item {
        ListenItem::Message { message } => Some(ListenEvent::Message(delivered(message))),
        ListenItem::Ephemeral { origin, frame } => {
            // Sessions of this node know themselves by their local id; an edge's session
            // compares the low bits of a foreign tag (`chorus_api::same_session`).
            let origin = match router {
                Some(r) => r.untag_session(origin).or(origin),
                None => origin,
            };
            Some(ListenEvent::Ephemeral(Arc::new(Relayed { origin, frame: frame.into() })))
        }
        ListenItem::Resync { from } => Some(ListenEvent::Resync { from }),
        ListenItem::AccessChanged => Some(ListenEvent::AccessChanged),
        ListenItem::Started { .. } | ListenItem::Failed { .. } | ListenItem::Ended => None,
    }
}

/// Opens the listen on the current leader, retrying through elections until the deadline.
async fn open_on_leader(
    router: &Router,
    caller: &Caller,
    key: &StreamKey,
    since: Option<u64>,
    deadline: Instant,
) -> Result<(Target, Listening), ServiceError> {
    let shard = router.node.shard_of(key);
    let mut pause = Duration::from_millis(20);
    loop {
        let target = router.target(shard, deadline).await?;
        match open(router, target, caller, key, since, deadline).await {
            Ok(l) => return Ok((target, l)),
            Err(OpenFailure::Final(e)) => return Err(e),
            Err(OpenFailure::Retry(e)) => {
                if Instant::now() + pause >= deadline {
                    return Err(e);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }
}

pub(crate) async fn listen(
    router: &Router,
    caller: &Caller,
    key: &StreamKey,
    since: Option<u64>,
) -> Result<Listening, ServiceError> {
    let deadline = Instant::now() + router.timeout;
    let (target, first) = open_on_leader(router, caller, key, since, deadline).await?;
    if target == Target::Local {
        return Ok(first);
    }
    let last = match since {
        Some(s) if first.recovered => s,
        _ => first.message_count,
    };
    let router_arc =
        router.self_arc().ok_or_else(|| err(ErrorCode::Unavailable, "node is stopping"))?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let relay = Relay { router: router_arc, caller: caller.clone(), key: key.clone(), last, tx };
    tokio::spawn(relay.run(first.events));
    let events: EventStream = Box::pin(tokio_stream_from(rx));
    Ok(Listening { recovered: first.recovered, message_count: first.message_count, events })
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<ListenEvent>,
) -> impl futures_core::Stream<Item = ListenEvent> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct Relay {
    router: Arc<Router>,
    caller: Caller,
    key: StreamKey,
    /// The last ordinal passed on.
    last: u64,
    tx: mpsc::Sender<ListenEvent>,
}

impl Relay {
    async fn run(mut self, mut events: EventStream) {
        loop {
            loop {
                // A session that goes away ends the relay even while the stream is quiet.
                let ev = tokio::select! {
                    ev = events.next() => ev,
                    () = self.tx.closed() => return,
                };
                let Some(ev) = ev else { break };
                let end = matches!(ev, ListenEvent::Resync { .. });
                if let ListenEvent::Message(d) = &ev {
                    if d.record.ordinal <= self.last {
                        continue;
                    }
                    self.last = d.record.ordinal;
                }
                if self.tx.send(ev).await.is_err() || end {
                    return;
                }
            }
            // The leader's stream ended: it failed or stepped down. Listen again from `last`.
            let mut pause = Duration::from_millis(50);
            events = loop {
                if self.tx.is_closed() {
                    return;
                }
                let deadline = Instant::now() + self.router.timeout;
                let r = &self.router;
                let reopened = tokio::select! {
                    r = open_on_leader(r, &self.caller, &self.key, Some(self.last), deadline) => r,
                    // The session went away while the leader was being looked for.
                    () = self.tx.closed() => return,
                };
                match reopened {
                    Ok((_, l)) if l.recovered => {
                        // An access change while the listen was down sent no notice here:
                        // the listener checks again before what the new leader sends.
                        if self.tx.send(ListenEvent::AccessChanged).await.is_err() {
                            return;
                        }
                        break l.events;
                    }
                    Ok((_, l)) => {
                        // The stream has fewer messages than we delivered: cannot resume.
                        tracing::warn!(stream = %self.key, last = self.last, count = l.message_count, "listen cannot resume");
                        let _ = self.tx.send(ListenEvent::Resync { from: self.last + 1 }).await;
                        return;
                    }
                    Err(e)
                        if e.error.code == ErrorCode::Unavailable
                            || e.error.code == ErrorCode::NotLeader =>
                    {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                    Err(e) => {
                        tracing::debug!(stream = %self.key, error = %e.error, "listen relay ends");
                        let _ = self.tx.send(ListenEvent::Resync { from: self.last + 1 }).await;
                        return;
                    }
                }
            };
        }
    }
}
