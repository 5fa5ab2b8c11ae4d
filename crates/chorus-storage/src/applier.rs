//! The group applier: one thread applies the committed entries of every shard and writes the
//! results of all shards that were waiting in one `WriteBatch`.
//!
//! Before it, each shard's state machine applied on the blocking pool; under load that meant
//! dozens of threads handing work back and forth and contending for RocksDB's write queue on
//! two cores. One thread that drains every pending job, computes each shard's writes against
//! its own state (shards have disjoint keys, so jobs never read each other's writes) and commits
//! them together does the same work with one write and one wake-up per group.

use std::sync::mpsc;
use std::thread;

use chorus_streams::{Command, Overlay, Write, apply_entry};
use chorus_types::{MessageRecord, ShardId, StreamKey, StreamRecord};
use openraft::EntryPayload;
use rocksdb::WriteBatch;
use tokio::sync::oneshot;

use crate::db::{Cf, Db, to_json};
use crate::error::{Result, StorageError};
use crate::keys::{self, RaftMeta};
use crate::log_writer::Threads;
use crate::raft_types::{Entry, ShardResponse, StoredMembership};
use crate::rocks_state::{RocksState, write_batch};
use crate::snapshot::AppliedState;
use crate::state_machine::AccessChange;
use crate::stream_cache::{CachedState, StreamCache};

/// Most jobs folded into one write.
const MAX_GROUP: usize = 256;

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

struct Job {
    shard: ShardId,
    applied: AppliedState,
    entries: Vec<Entry>,
    reply: oneshot::Sender<Result<Applied>>,
}

/// What the applier thread is asked to do.
enum Work {
    Apply(Job),
    /// A snapshot replaced the shard's state behind the applier's back.
    Forget(ShardId, oneshot::Sender<()>),
}

/// Handle to the applier thread; cheap to clone. The thread stops when every handle is dropped.
#[derive(Clone)]
pub struct Applier {
    // Declared before `_thread`: the channel must close before the thread is joined.
    tx: mpsc::Sender<Work>,
    _thread: std::sync::Arc<Threads>,
}

impl Applier {
    pub fn start(db: Db) -> Result<Applier> {
        let (tx, rx) = mpsc::channel::<Work>();
        let handle =
            thread::Builder::new().name("chorus-apply".into()).spawn(move || apply_loop(db, rx))?;
        Ok(Applier { tx, _thread: Threads::new(vec![handle]) })
    }

    /// Applies `entries` on top of `applied`; returns once the result is written.
    pub async fn apply(
        &self,
        shard: ShardId,
        applied: AppliedState,
        entries: Vec<Entry>,
    ) -> Result<Applied> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Work::Apply(Job { shard, applied, entries, reply }))
            .map_err(|_| StorageError::WriterStopped)?;
        rx.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Drops what the applier keeps of `shard` (its stream records): call after replacing the
    /// shard's state from a snapshot, before it applies again.
    pub async fn forget(&self, shard: ShardId) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Work::Forget(shard, reply)).map_err(|_| StorageError::WriterStopped)?;
        rx.await.map_err(|_| StorageError::WriterStopped)
    }
}

/// One job's result before its batch is written: stream records go to the cache only after.
struct Computed {
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

/// Computes one job's outcomes and adds its writes (and applied state) to `batch`.
fn compute(
    db: &Db,
    cache: &StreamCache,
    job: &mut Job,
    batch: &mut WriteBatch,
) -> Result<Computed> {
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
    write_batch(db, job.shard, batch, &writes)?;
    batch.put_cf(
        db.cf(Cf::RaftMeta)?,
        keys::raft_meta(job.shard, RaftMeta::Applied),
        to_json(&applied)?,
    );
    let mut messages = Vec::new();
    let mut streams = Vec::new();
    for w in writes {
        match w {
            Write::Message(m) => messages.push(m),
            Write::Stream(s) => streams.push(s),
            _ => {}
        }
    }
    Ok(Computed {
        applied: Applied { responses, applied, messages, access_change, access_keys },
        streams,
    })
}

fn apply_loop(db: Db, rx: mpsc::Receiver<Work>) {
    let cache = StreamCache::default();
    while let Ok(first) = rx.recv() {
        let mut jobs = Vec::new();
        let mut next = Some(first);
        while let Some(work) = next.take() {
            match work {
                Work::Apply(job) => jobs.push(job),
                // Before any job queued after it: they see the snapshot's state.
                Work::Forget(shard, done) if jobs.is_empty() => {
                    cache.forget_shard(shard);
                    let _ = done.send(());
                }
                // A job of another shard is ahead of it: run those first, then forget.
                Work::Forget(shard, done) => {
                    run_jobs(&db, &cache, jobs);
                    jobs = Vec::new();
                    cache.forget_shard(shard);
                    let _ = done.send(());
                }
            }
            if jobs.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        if !jobs.is_empty() {
            run_jobs(&db, &cache, jobs);
        }
    }
}

/// Computes `jobs` against the state (and cache), writes them in one batch and answers them.
fn run_jobs(db: &Db, cache: &StreamCache, mut jobs: Vec<Job>) {
    let started = std::time::Instant::now();
    let mut batch = WriteBatch::default();
    let results: Result<Vec<Computed>> =
        jobs.iter_mut().map(|job| compute(db, cache, job, &mut batch)).collect();
    // Not synced: the Raft log is. State and applied ids are written together, so after a
    // crash each shard re-applies the committed rest of its log.
    let results = results.and_then(|r| {
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(false);
        db.raw().write_opt(batch, &wo)?;
        Ok(r)
    });
    crate::metrics::APPLY_SECONDS.observe(started.elapsed().as_secs_f64());
    match results {
        Ok(computed) => {
            for (job, c) in jobs.into_iter().zip(computed) {
                for record in c.streams {
                    cache.keep(job.shard, record);
                }
                let _ = job.reply.send(Ok(c.applied));
            }
        }
        Err(e) => {
            // What was read for this batch may be ahead of what got written.
            cache.clear();
            // A storage failure is fatal for the shards involved: openraft stops them.
            tracing::error!(error = %e, jobs = jobs.len(), "applying committed entries failed");
            let msg = e.to_string();
            for job in jobs {
                let _ = job.reply.send(Err(StorageError::Io(std::io::Error::other(msg.clone()))));
            }
        }
    }
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
