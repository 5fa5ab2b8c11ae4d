//! The shard proposer: one task per shard that merges the entries of every stream actor of the
//! shard into one Raft entry.
//!
//! openraft 0.9 appends one entry batch per log flush and waits for the flush before the next,
//! so a shard commits at most one append per fsync. Merging what every actor of the shard has
//! ready into that one append is what lets a shard carry many streams: while an entry commits,
//! the proposals of the next one accumulate here, and before closing an entry the proposer
//! yields a few times so that proposals already on their way join it ([`GATHER_YIELDS`]).
//! Submission order is kept (one FIFO), so each actor's entries commit in the order it
//! proposed them.
//!
//! Once the entry applies, the proposer answers every caller itself and tells each actor its
//! turn is over, at the same time. Handing the outcomes to the actor to answer added a task
//! wake-up between commit and client on every post, and on two busy cores each wake-up waits
//! behind the runtime's other ready tasks.

use chorus_api::ServiceError;
use chorus_storage::ShardRequest;
use chorus_streams::access::Access;
use chorus_streams::{Envelope, Outcome};
use chorus_types::{ErrorCode, ShardId};
use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::actor::Reply;
use crate::error::err;
use crate::metrics;

/// Most commands in one merged entry.
const MAX_COMMANDS: usize = 2048;

/// Times the proposer steps back for the rest of the runtime's ready work before it closes an
/// entry. The first proposal wakes it, and the requests that other sessions and actors are
/// about to hand over are usually already runnable: a yield lets them arrive and travel in
/// this entry instead of waiting a whole commit for the next. An idle runtime returns from a
/// yield at once, so a lone post pays microseconds.
///
/// Measured (`loadgen`, 256 in flight over 256 streams, alternated runs on one node): 0 yields
/// 19,907 / 19,436 / 16,964 posts/s, 4 yields 22,860 / 22,563 / 23,420, with 1.8 against 2.7
/// posts per entry and a lower p99; in the 3-node `replicated` W1 at 256 in flight, 4,546 /
/// 4,899 against 5,173 / 6,007. 16 yields gained less in the cluster, and 1 or 2 less on one
/// node.
const GATHER_YIELDS: u32 = 4;

type ProposalResult = Result<Vec<Outcome>, ServiceError>;

/// Callers of one proposed entry, in envelope order, with the access each was checked at.
pub type Waiters = Vec<(oneshot::Sender<Reply>, Access)>;

/// One actor's turn: its commands, who waits for each, and the actor itself, told once every
/// caller has been answered (`Err` when the entry failed, e.g. `not_leader`).
struct Proposal {
    envelopes: Vec<Envelope>,
    waiters: Waiters,
    done: oneshot::Sender<Result<(), ServiceError>>,
}

impl Proposal {
    /// Answers the callers from the entry's next `n` outcomes (one per envelope of this
    /// proposal): exactly `n` are taken, so a proposal never hands an unused outcome to the
    /// next one's callers.
    fn answer(self, n: usize, outcomes: &mut impl Iterator<Item = Outcome>) {
        let mut mine = outcomes.take(n);
        for ((reply, access), outcome) in self.waiters.into_iter().zip(mine.by_ref()) {
            let _ = reply.send(Ok((outcome, access)));
        }
        mine.for_each(drop);
        let _ = self.done.send(Ok(()));
    }

    fn fail(self, e: ServiceError) {
        for (reply, _) in self.waiters {
            let _ = reply.send(Err(e.clone()));
        }
        let _ = self.done.send(Err(e));
    }
}

/// Handle to one shard's proposer.
pub struct ShardProposer {
    /// Unbounded, yet bounded in practice: each stream actor has at most one proposal in
    /// flight, so the queue never holds more than one proposal per active stream.
    tx: mpsc::UnboundedSender<Proposal>,
    task: JoinHandle<()>,
}

impl ShardProposer {
    pub fn start(
        node_id: u64,
        shard: ShardId,
        raft: chorus_raft::Raft,
        timeout: std::time::Duration,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let span =
            tracing::info_span!(parent: None, "shard_proposer", node = node_id, shard = shard.0);
        let task = tokio::spawn(run(shard, raft, rx, timeout).instrument(span));
        ShardProposer { tx, task }
    }

    /// Queues `envelopes`; once they are committed and applied, each waiter gets its
    /// envelope's outcome, then the receiver resolves (`Err` when the entry failed; every
    /// waiter got that error too).
    pub fn propose(
        &self,
        envelopes: Vec<Envelope>,
        waiters: Waiters,
    ) -> oneshot::Receiver<Result<(), ServiceError>> {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(p)) = self.tx.send(Proposal { envelopes, waiters, done })
        {
            p.fail(err(ErrorCode::Unavailable, "shard proposer stopped"));
        }
        rx
    }

    /// Stops the task; proposals still queued are answered `unavailable` by their callers
    /// seeing the reply dropped.
    pub fn abort(&self) {
        self.task.abort();
    }
}

async fn run(
    shard: ShardId,
    raft: chorus_raft::Raft,
    mut rx: mpsc::UnboundedReceiver<Proposal>,
    timeout: std::time::Duration,
) {
    while let Some(first) = rx.recv().await {
        let mut count = first.envelopes.len();
        let mut batch = vec![first];
        let mut yields = 0;
        loop {
            while count < MAX_COMMANDS {
                match rx.try_recv() {
                    Ok(p) => {
                        count += p.envelopes.len();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            if yields == GATHER_YIELDS || count >= MAX_COMMANDS {
                break;
            }
            yields += 1;
            tokio::task::yield_now().await;
        }
        metrics::BATCH_COMMANDS.observe(count as f64);
        let mut envelopes = Vec::with_capacity(count);
        let mut proposals = Vec::with_capacity(batch.len());
        for mut p in batch {
            let n = p.envelopes.len();
            envelopes.append(&mut p.envelopes);
            proposals.push((n, p));
        }
        match commit(shard, &raft, envelopes, timeout).await {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (n, p) in proposals {
                    p.answer(n, &mut outcomes);
                }
            }
            Err(e) => {
                for (_, p) in proposals {
                    p.fail(e.clone());
                }
            }
        }
    }
}

async fn commit(
    shard: ShardId,
    raft: &chorus_raft::Raft,
    envelopes: Vec<Envelope>,
    timeout: std::time::Duration,
) -> ProposalResult {
    let started = std::time::Instant::now();
    let rx = raft.client_write_ff(ShardRequest::new(envelopes)).await.map_err(|fatal| {
        tracing::error!(%shard, error = %fatal, "shard group stopped");
        err(ErrorCode::Unavailable, "shard is unavailable")
    })?;
    let result = tokio::time::timeout(timeout, rx).await;
    metrics::COMMIT_SECONDS.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(Ok(Ok(resp))) => Ok(resp.data.outcomes),
        Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => {
            let mut e = chorus_types::ApiError::new(ErrorCode::NotLeader, "not the shard leader");
            if let Some(leader) = f.leader_id {
                e.message = format!("not the shard leader; leader is node {leader}");
            }
            Err(ServiceError::from(e))
        }
        Ok(Ok(Err(other))) => Err(err(ErrorCode::Unavailable, &other.to_string())),
        // The entry may have been appended: the outcome is unknown.
        Ok(Err(_)) => {
            Err(err(ErrorCode::Timeout, "shard stopped before confirming; outcome unknown"))
        }
        // The entry may still commit: the outcome is unknown, and a retry with the same
        // clientMsgId is safe.
        Err(_) => Err(err(ErrorCode::Timeout, "not committed in time; outcome unknown")),
    }
}
