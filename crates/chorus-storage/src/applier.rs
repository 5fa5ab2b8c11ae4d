//! Applying committed entries: what the node's [`WriteThread`] runs for every shard's state
//! machine, so that the results of all shards waiting at once are written in one
//! `WriteBatch` (together with the Raft log appends that arrived meanwhile).
//!
//! Before, each shard's state machine applied on the blocking pool; under load that meant
//! dozens of threads handing work back and forth and contending for RocksDB's write queue on
//! two cores. One thread that drains every pending job, computes each shard's writes against
//! its own state (shards have disjoint keys, so jobs never read each other's writes) and commits
//! them together does the same work with one write and one wake-up per group.

use chorus_streams::{Command, Overlay, Write, apply_entry};
use chorus_types::{MessageRecord, ShardId, StreamKey, StreamRecord};
use openraft::EntryPayload;
use rocksdb::WriteBatch;
use tokio::sync::oneshot;

use crate::db::{Cf, Db, to_json};
use crate::error::{Result, StorageError};
use crate::keys::{self, RaftMeta};
use crate::raft_types::{Entry, ShardResponse, StoredMembership};
use crate::rocks_state::{RocksState, write_batch};
use crate::snapshot::AppliedState;
use crate::state_machine::AccessChange;
use crate::stream_cache::{CachedState, StreamCache};
use crate::write_thread::{Work, WriteThread};

/// What applying one shard's entries produced.
pub struct Applied {
    pub responses: Vec<ShardResponse>,
    pub applied: AppliedState,
    /// Committed messages in ordinal order, for listeners.
    pub messages: Vec<MessageRecord>,
    /// What the entries may have changed for access (anything but posts): cached access
    /// contexts must be reloaded.
    pub access_change: AccessChange,
    /// Streams (and rule pseudo-streams) whose records or access rows the entries changed,
    /// each once: their listeners are checked again.
    pub access_keys: Vec<StreamKey>,
}

pub(crate) struct Job {
    pub(crate) shard: ShardId,
    pub(crate) applied: AppliedState,
    pub(crate) entries: Vec<Entry>,
    pub(crate) reply: oneshot::Sender<Result<Applied>>,
}

/// A state machine's handle to the write thread's apply side; cheap to clone.
#[derive(Clone)]
pub struct Applier {
    thread: WriteThread,
}

impl Applier {
    /// An applier on its own write thread (tests; a node shares one thread, see
    /// [`WriteThread::applier`]).
    pub fn start(db: Db) -> Result<Applier> {
        Ok(WriteThread::start(db)?.applier())
    }

    pub(crate) fn new(thread: WriteThread) -> Applier {
        Applier { thread }
    }

    /// Applies `entries` on top of `applied`; returns once the result is written.
    pub async fn apply(
        &self,
        shard: ShardId,
        applied: AppliedState,
        entries: Vec<Entry>,
    ) -> Result<Applied> {
        let (reply, rx) = oneshot::channel();
        self.thread.send(Work::Apply(Job { shard, applied, entries, reply }))?;
        rx.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Drops what the write thread keeps of `shard` (its stream records): call after replacing
    /// the shard's state from a snapshot, before it applies again.
    pub async fn forget(&self, shard: ShardId) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.thread.send(Work::Forget(shard, reply))?;
        rx.await.map_err(|_| StorageError::WriterStopped)
    }
}

/// One job's result before it is staged in a batch.
pub(crate) struct Computed {
    shard: ShardId,
    applied: Applied,
    writes: Vec<Write>,
}

/// One job's result once its writes are in the batch: stream records go to the cache only
/// after the batch is written.
pub(crate) struct Staged {
    applied: Applied,
    streams: Vec<StreamRecord>,
}

/// What `command` may change for access checks.
fn access_change_of(command: &Command) -> AccessChange {
    match command {
        Command::Post { .. } => AccessChange::Nothing,
        Command::Participate { .. } | Command::JoinBatch { .. } => AccessChange::Participants,
        Command::Create { .. }
        | Command::Update { .. }
        | Command::Close { .. }
        | Command::SetAccess { .. } => AccessChange::Sources,
    }
}

/// The stream whose readers `command` may shut out: access rows replaced, or levels or
/// `inheritAccess` set. A title or attribute update (frequent on busy rooms) is not one, so it
/// does not make every listener of a big room be checked again.
fn read_access_key(command: &Command) -> Option<StreamKey> {
    match command {
        Command::SetAccess { key, .. } => Some(key.clone()),
        Command::Update { key, changes, .. }
            if changes.read_level.is_some()
                || changes.write_level.is_some()
                || changes.admin_level.is_some()
                || changes.inherit_access.is_some() =>
        {
            Some(key.clone())
        }
        _ => None,
    }
}

/// What a job costs to apply, in rows ([`Command::weight`]).
pub(crate) fn weight(job: &Job) -> usize {
    job.entries
        .iter()
        .map(|entry| match &entry.payload {
            EntryPayload::Normal(req) => req.envelopes.iter().map(|e| e.command.weight()).sum(),
            _ => 1,
        })
        .sum()
}

/// Computes one job's outcomes and writes against the state (and cache), writing nothing.
pub(crate) fn compute(db: &Db, cache: &StreamCache, job: &mut Job) -> Result<Computed> {
    let state = CachedState { rocks: RocksState { db, shard: job.shard }, cache };
    let mut overlay = Overlay::new(&state);
    let mut applied = job.applied.clone();
    let mut responses = Vec::with_capacity(job.entries.len());
    let mut access_change = AccessChange::Nothing;
    let mut access_keys: Vec<StreamKey> = Vec::new();
    for entry in std::mem::take(&mut job.entries) {
        applied.0 = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => responses.push(ShardResponse::default()),
            EntryPayload::Normal(req) => {
                access_change = req
                    .envelopes
                    .iter()
                    .map(|e| access_change_of(&e.command))
                    .fold(access_change, Ord::max);
                for key in req.envelopes.iter().filter_map(|e| read_access_key(&e.command)) {
                    if !access_keys.contains(&key) {
                        access_keys.push(key);
                    }
                }
                let outcomes = apply_entry(&mut overlay, &req.envelopes)?;
                responses.push(ShardResponse { outcomes });
            }
            EntryPayload::Membership(m) => {
                applied.1 = StoredMembership::new(Some(entry.log_id), m);
                responses.push(ShardResponse::default());
            }
        }
    }
    let writes = overlay.into_writes();
    Ok(Computed {
        shard: job.shard,
        applied: Applied { responses, applied, messages: Vec::new(), access_change, access_keys },
        writes,
    })
}

/// Adds a computed job's writes and applied state to `batch`.
pub(crate) fn stage(db: &Db, batch: &mut WriteBatch, c: Computed) -> Result<Staged> {
    let Computed { shard, mut applied, writes } = c;
    write_batch(db, shard, batch, &writes)?;
    batch.put_cf(
        db.cf(Cf::RaftMeta)?,
        keys::raft_meta(shard, RaftMeta::Applied),
        to_json(&applied.applied)?,
    );
    let mut streams = Vec::new();
    for w in writes {
        match w {
            Write::Message(m) => applied.messages.push(m),
            Write::Stream(s) => streams.push(s),
            _ => {}
        }
    }
    Ok(Staged { applied, streams })
}

/// Answers a job whose batch was written.
pub(crate) fn answer(cache: &StreamCache, job: Job, staged: Staged) {
    for record in staged.streams {
        cache.keep(job.shard, record);
    }
    let _ = job.reply.send(Ok(staged.applied));
}

/// Answers a job whose batch failed.
pub(crate) fn fail(job: Job, msg: &str) {
    let _ = job.reply.send(Err(StorageError::Io(std::io::Error::other(msg.to_string()))));
}

#[cfg(test)]
mod tests {
    use chorus_streams::FieldChanges;
    use chorus_types::{PublisherId, StreamName};

    use super::*;

    #[test]
    fn only_level_and_row_changes_recheck_readers() {
        let key = StreamKey::new(
            PublisherId::new("alice").unwrap(),
            StreamName::new("Chat/room/1").unwrap(),
        );
        let update =
            |changes| Command::Update { key: key.clone(), changes, if_message_count: None };
        let title = FieldChanges { title: Some("t".into()), ..FieldChanges::default() };
        assert_eq!(read_access_key(&update(title)), None);
        let level = FieldChanges { read_level: Some(10), ..FieldChanges::default() };
        assert_eq!(read_access_key(&update(level)), Some(key.clone()));
        let rows = Command::SetAccess { key: key.clone(), rows: Vec::new() };
        assert_eq!(read_access_key(&rows), Some(key.clone()));
        assert_eq!(read_access_key(&Command::Close { key: key.clone() }), None);
    }
}
