//! The stream actor: on the shard's leader, one task per active stream serialises its writes.
//!
//! Each turn takes every queued request (up to `max_batch`, where a batch join weighs one per
//! user, and up to the first that changes access: [`crate::authorize::WriteOp::ends_turn`]),
//! checks each against the access context (cached until an access-changing command applies
//! anywhere on the node), and proposes all allowed commands as **one** entry through the
//! shard's proposer, which answers the callers once the entry applies. The actor waits for
//! that entry to apply before its next turn:
//! requests that arrive meanwhile travel together in the next entry (group commit at the
//! stream; openraft 0.9 appends one batch per fsync per shard, so more entries in flight would
//! only queue). Waiting also makes every write a barrier: an access or state change is in
//! force for the next turn.
//!
//! In a cluster, an actor starts only where the router found the shard's leader. Before its
//! first turn it passes a read barrier (`ensure_linearizable`), so the state it checks access
//! against includes everything the previous leader committed. When a proposal fails with
//! `not_leader`, the actor stops: if this node leads again later, a fresh actor repeats the
//! barrier.

use std::sync::Arc;
use std::time::Instant;

use chorus_api::{Caller, ServiceError};
use chorus_storage::rocks_state::RocksState;
use chorus_streams::access::Access;
use chorus_streams::{DEDUPE_WINDOW_MS, Envelope, Outcome, StateRead};
use chorus_types::{ClientMsgId, ErrorCode, MessageRecord, Millis, StreamKey, shard::shard_of};
use tokio::sync::{mpsc, oneshot};

use crate::access_ctx::AccessCtx;
use crate::actors::NodeRef;
use crate::authorize::{WriteOp, authorize};
use crate::metrics;
use crate::proposer::Waiters;

pub type Reply = Result<(Outcome, Access), ServiceError>;

pub struct ActorRequest {
    pub caller: Caller,
    pub op: WriteOp,
    pub reply: oneshot::Sender<Reply>,
}

pub struct StreamActor {
    node: NodeRef,
    key: StreamKey,
    /// The mailbox; closed by the registry when the actor retires or the node stops.
    rx: mpsc::Receiver<ActorRequest>,
    /// The access context of the last turn and the hub's access epoch when it was read. Reused
    /// while the epoch is unchanged: only non-post commands change access, and each of them
    /// bumps the epoch when it applies here, before its caller hears back. Parts read from
    /// other shards may change without applying here, so a context holding them is also
    /// read again once it expires (`AccessCtx::expires`, `SOURCE_TTL`).
    cached: Option<(u64, Arc<AccessCtx>)>,
    /// Set once the read barrier of this actor's leadership has passed.
    caught_up: bool,
    /// Set when a proposal found this node deposed: the actor retires.
    deposed: bool,
}

impl StreamActor {
    pub fn new(node: NodeRef, key: StreamKey, rx: mpsc::Receiver<ActorRequest>) -> Self {
        StreamActor { node, key, rx, cached: None, caught_up: false, deposed: false }
    }

    pub async fn run(mut self) {
        metrics::STREAM_ACTORS.inc();
        // One idle timer for the actor's life, re-armed only when it fires: a timeout around
        // each wait registered and cleared a timer-wheel entry for every turn (~1 % of a
        // node's CPU under load). It fires `idle` after the end of the last turn.
        let idle_timer = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(idle_timer);
        let mut last_turn = tokio::time::Instant::now();
        let mut armed = false;
        loop {
            let Some(node) = self.node.upgrade() else { break };
            let (idle, max_batch) = {
                let s = node.actors.settings();
                (s.idle, s.max_batch)
            };
            if !armed {
                idle_timer.as_mut().reset(last_turn + idle);
                armed = true;
            }
            let first = tokio::select! {
                biased;
                req = self.rx.recv() => match req {
                    Some(req) => req,
                    None => break,
                },
                () = &mut idle_timer => {
                    armed = false;
                    if last_turn.elapsed() < idle {
                        // A turn ran since it was set: wait again from the end of that turn.
                        continue;
                    }
                    if node.actors.retire(&self.key, &mut self.rx) {
                        break;
                    }
                    // A request came in meanwhile; it is taken next.
                    last_turn = tokio::time::Instant::now();
                    continue;
                }
            };
            // Weighted, so a turn holds `max_batch` ordinary commands or one batch join.
            let mut weight = first.op.weight();
            let mut open = !first.op.ends_turn();
            let mut batch = vec![first];
            while open && weight < max_batch {
                match self.rx.try_recv() {
                    Ok(req) => {
                        weight += req.op.weight();
                        open = !req.op.ends_turn();
                        batch.push(req);
                    }
                    Err(_) => break,
                }
            }
            self.turn(&node, batch).await;
            last_turn = tokio::time::Instant::now();
            // A request for a stream that does not exist (a typo, a scan of names) should not
            // keep an actor alive for the idle period.
            let missing = self.cached.as_ref().is_some_and(|(_, ctx)| ctx.stream().is_none());
            if self.deposed && node.actors.retire(&self.key, &mut self.rx) {
                break;
            }
            if missing
                && !self.key.name.is_type_rule()
                && node.actors.retire(&self.key, &mut self.rx)
            {
                break;
            }
        }
        metrics::STREAM_ACTORS.dec();
    }

    async fn context(
        &mut self,
        node: &Arc<crate::node::Inner>,
    ) -> Result<Arc<AccessCtx>, ServiceError> {
        let epoch = node.hub.access_epoch();
        if let Some((cached_epoch, ctx)) = &self.cached
            && *cached_epoch == epoch
            && ctx.in_force(Instant::now())
        {
            return Ok(ctx.clone());
        }
        let ctx = Arc::new(AccessCtx::load(node, &self.key).await?);
        self.cached = Some((epoch, ctx.clone()));
        Ok(ctx)
    }

    /// Waits until this replica has applied everything committed before this leadership.
    async fn catch_up(&mut self, node: &Arc<crate::node::Inner>) -> Result<(), ServiceError> {
        if self.caught_up {
            return Ok(());
        }
        let shard = shard_of(&self.key, node.shard_count);
        node.ensure_linearizable(shard).await.map_err(|e| {
            tracing::debug!(stream = %self.key, error = %e, "actor read barrier failed");
            e.to_service()
        })?;
        self.caught_up = true;
        Ok(())
    }

    async fn turn(&mut self, node: &Arc<crate::node::Inner>, batch: Vec<ActorRequest>) {
        if let Err(e) = self.catch_up(node).await {
            self.deposed = true;
            for req in batch {
                let _ = req.reply.send(Err(e.clone()));
            }
            return;
        }
        let ctx = match self.context(node).await {
            Ok(ctx) => ctx,
            Err(e) => {
                for req in batch {
                    let _ = req.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let time = Millis::now();
        let mut envelopes = Vec::with_capacity(batch.len());
        let mut waiters: Waiters = Vec::with_capacity(batch.len());
        for req in batch {
            let retry_of = match &req.op {
                WriteOp::Post { client_msg_id: Some(id), .. } => Some(id.clone()),
                _ => None,
            };
            match authorize(&ctx, &self.key, &req.caller, req.op) {
                Ok((command, access)) => {
                    envelopes.push(Envelope { time, by: req.caller.by_user_id(), command });
                    waiters.push((req.reply, access));
                }
                Err(e) => {
                    let earlier = match retry_of {
                        Some(id) if refusal(e.error.code) => {
                            earlier_post(node, &self.key, req.caller.by_user_id(), id, time).await
                        }
                        _ => None,
                    };
                    let reply = match earlier {
                        Some(first) => {
                            let access = ctx.access(&req.caller).unwrap_or(Access::NONE);
                            Ok((
                                Outcome::Posted { message: Box::new(first), duplicate: true },
                                access,
                            ))
                        }
                        None => Err(e),
                    };
                    let _ = req.reply.send(reply);
                }
            }
        }
        if envelopes.is_empty() {
            return;
        }
        tracing::trace!(stream = %self.key, commands = envelopes.len(), "proposing");
        let shard = shard_of(&self.key, node.shard_count);
        // The proposer answers the callers; this waits only for the turn to end. A proposer
        // that stopped dropped the waiters, whose callers then hear `unavailable`.
        let done = node.proposers[usize::from(shard.0)].propose(envelopes, waiters).await;
        if let Ok(Err(e)) = done
            && e.error.code == ErrorCode::NotLeader
        {
            self.deposed = true;
        }
    }
}

/// Refusals that a poster's earlier, acknowledged post outranks.
fn refusal(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Forbidden | ErrorCode::NotFound)
}

/// The message a retry of the caller's own post (same `clientMsgId`, within the dedupe window)
/// stands for, looked up only when the retry is refused: a retry returns the original (as
/// after a close), so a client whose reply was lost and whose access was cut meanwhile learns
/// that its message is stored, not that it failed. The message is the caller's own: nothing
/// leaks.
pub(crate) async fn earlier_post(
    node: &Arc<crate::node::Inner>,
    key: &StreamKey,
    by: String,
    id: ClientMsgId,
    now: Millis,
) -> Option<MessageRecord> {
    let (db, shard, key) = (node.db.clone(), shard_of(key, node.shard_count), key.clone());
    let read = move || {
        let state = RocksState { db: &db, shard };
        let seen = state.dedupe(&key, &by, &id).ok()??;
        if now.0.saturating_sub(seen.time.0) >= DEDUPE_WINDOW_MS {
            return None;
        }
        state.message(&key, seen.ordinal).ok()?
    };
    tokio::task::spawn_blocking(read).await.ok()?
}
