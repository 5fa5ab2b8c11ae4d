//! The node's one storage write thread: it writes the Raft log appends of every shard and the
//! results of applying every shard's committed entries, together, in one `WriteBatch`.
//!
//! ```text
//!  LogStore::append / truncate / purge ─┐                        ┌─▶ log ops "written"
//!  StateMachine::apply (any shard) ─────┼─▶ write thread: drain, ┼─▶ apply results
//!  StateMachine snapshot install ───────┘   compute the applies, └─▶ syncer thread: one
//!                                           one WriteBatch,           flush_wal(sync), then
//!                                           no sync                   every LogFlushed
//! ```
//!
//! Log appends and applies used to run on two threads, each with its own `WriteBatch`. On two
//! cores that cost a wake-up of each thread per group and a RocksDB write group shared by two
//! writers (one waits on a futex for the other); one thread doing both writes once and wakes
//! once. The fsync stays on its own thread, so appends and applies that arrive while the disk
//! syncs are written meanwhile and share the next fsync.
//!
//! Ordering: work runs in arrival order (one FIFO), so a shard's truncate or purge never
//! overtakes an earlier append, and a shard's apply always reads what its earlier applies
//! wrote. Openraft applies one batch of a shard at a time, so the jobs of one group belong to
//! different shards, whose keys are disjoint: no job reads another's writes.

use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use chorus_types::ShardId;
use openraft::storage::LogFlushed;
use rocksdb::WriteBatch;
use tokio::sync::oneshot;

use crate::applier::{self, Applier, Job, Staged};
use crate::db::Db;
use crate::error::{Result, StorageError};
use crate::log_writer::{self, LogOp, LogWriter, Threads};
use crate::metrics;
use crate::raft_types::TypeConfig;
use crate::stream_cache::StreamCache;

/// Most log operations folded into one `WriteBatch`, to bound the latency of the first.
const MAX_LOG_OPS: usize = 4096;
/// Most apply jobs folded into one `WriteBatch`.
const MAX_JOBS: usize = 256;

/// What the write thread is asked to do.
pub(crate) enum Work {
    Log(LogOp),
    Apply(Job),
    /// A snapshot replaced the shard's state behind the thread's back: drop its cached
    /// stream records.
    Forget(ShardId, oneshot::Sender<()>),
}

/// Handle to the write and sync threads; cheap to clone. The threads stop when every handle
/// is dropped, and the last handle waits for them (see [`Threads`]).
#[derive(Clone)]
pub struct WriteThread {
    // Declared before `_threads`: the channel must close before the threads are joined.
    tx: mpsc::Sender<Work>,
    _threads: std::sync::Arc<Threads>,
}

impl WriteThread {
    pub fn start(db: Db) -> Result<WriteThread> {
        let (tx, rx) = mpsc::channel::<Work>();
        let (sync_tx, sync_rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let sync_db = db.clone();
        let syncer = thread::Builder::new()
            .name("chorus-log-sync".into())
            .spawn(move || log_writer::sync_loop(sync_db, sync_rx))?;
        let writer = thread::Builder::new()
            .name("chorus-write".into())
            .spawn(move || write_loop(db, rx, sync_tx))?;
        // Writer first: its exit closes the syncer's channel.
        Ok(WriteThread { tx, _threads: Threads::new(vec![writer, syncer]) })
    }

    /// The handle every shard's log store writes through.
    pub fn log_writer(&self) -> LogWriter {
        LogWriter::new(self.clone())
    }

    /// The handle every shard's state machine applies through.
    pub fn applier(&self) -> Applier {
        Applier::new(self.clone())
    }

    pub(crate) fn send(&self, work: Work) -> Result<()> {
        self.tx.send(work).map_err(|_| StorageError::WriterStopped)
    }
}

/// The work drained for one `WriteBatch`.
#[derive(Default)]
struct Group {
    log: Vec<LogOp>,
    jobs: Vec<Job>,
}

impl Group {
    fn is_full(&self) -> bool {
        self.log.len() >= MAX_LOG_OPS || self.jobs.len() >= MAX_JOBS
    }

    fn is_empty(&self) -> bool {
        self.log.is_empty() && self.jobs.is_empty()
    }
}

fn write_loop(db: Db, rx: mpsc::Receiver<Work>, sync_tx: mpsc::Sender<LogFlushed<TypeConfig>>) {
    let cache = StreamCache::default();
    while let Ok(first) = rx.recv() {
        let mut group = Group::default();
        let mut next = Some(first);
        while let Some(work) = next.take() {
            match work {
                Work::Log(op) => group.log.push(op),
                Work::Apply(job) => group.jobs.push(job),
                // Jobs queued before it run first; jobs queued after it see the new state.
                Work::Forget(shard, done) => {
                    if !group.jobs.is_empty() {
                        commit(&db, &cache, &sync_tx, std::mem::take(&mut group));
                    }
                    cache.forget_shard(shard);
                    let _ = done.send(());
                }
            }
            if !group.is_full() {
                next = rx.try_recv().ok();
            }
        }
        if !group.is_empty() {
            commit(&db, &cache, &sync_tx, group);
        }
    }
}

/// Apply work (in rows: a batch join weighs one per user) above which a group's log
/// operations are written, and handed to the syncer, before its applies are computed: a few
/// big batch joins must not hold every shard's appends (followers' included) for as long as
/// their hundreds of thousands of participant rows take.
const HEAVY_APPLY: usize = 4096;

/// Writes a group's log operations and applied state in one batch, then answers them: apply
/// jobs at once (their state needs no fsync: the Raft log is the source of truth, and state
/// and applied ids are written together, so after a crash a shard re-applies the rest of its
/// log), log appends once the syncer's fsync covers them.
fn commit(
    db: &Db,
    cache: &StreamCache,
    sync_tx: &mpsc::Sender<LogFlushed<TypeConfig>>,
    group: Group,
) {
    let Group { mut log, mut jobs } = group;
    if !log.is_empty() && jobs.iter().map(applier::weight).sum::<usize>() > HEAVY_APPLY {
        commit(db, cache, sync_tx, Group { log: std::mem::take(&mut log), jobs: Vec::new() });
    }
    let started = Instant::now();
    let mut batch = WriteBatch::default();
    // A job that cannot be computed or staged fails every job of the group (what was read for
    // them may be ahead of what gets written) but not the log operations: the batch is
    // emptied of the jobs' writes before the log's are added.
    let staged = stage_jobs(db, cache, &mut jobs, &mut batch);
    let written =
        log.iter().try_for_each(|op| log_writer::add_to_batch(db, &mut batch, op)).and_then(|()| {
            if batch.is_empty() {
                return Ok(());
            }
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(false);
            db.raw().write_opt(batch, &wo).map_err(StorageError::from)
        });
    if !jobs.is_empty() {
        metrics::APPLY_SECONDS.observe(started.elapsed().as_secs_f64());
    }
    let failure = written.err().map(|e| e.to_string());
    if let Some(msg) = &failure {
        tracing::error!(error = %msg, ops = log.len(), jobs = jobs.len(), "storage write failed");
    }
    log_writer::answer(log, failure.as_deref(), sync_tx);
    match (failure, staged) {
        (None, Ok(staged)) => {
            for (job, s) in jobs.into_iter().zip(staged) {
                applier::answer(cache, job, s);
            }
        }
        (Some(msg), _) => fail_jobs(cache, jobs, &msg),
        (None, Err(msg)) => {
            tracing::error!(error = %msg, jobs = jobs.len(), "applying committed entries failed");
            fail_jobs(cache, jobs, &msg);
        }
    }
}

/// Computes every job and adds its writes to `batch`; on any failure, none of them is left
/// in `batch`.
fn stage_jobs(
    db: &Db,
    cache: &StreamCache,
    jobs: &mut [Job],
    batch: &mut WriteBatch,
) -> std::result::Result<Vec<Staged>, String> {
    let staged = jobs
        .iter_mut()
        .map(|job| applier::compute(db, cache, job))
        .collect::<Result<Vec<_>>>()
        .and_then(|computed| computed.into_iter().map(|c| applier::stage(db, batch, c)).collect());
    staged.map_err(|e| {
        batch.clear();
        e.to_string()
    })
}

fn fail_jobs(cache: &StreamCache, jobs: Vec<Job>, msg: &str) {
    if jobs.is_empty() {
        return;
    }
    // What was read for these jobs may be ahead of what got written.
    cache.clear();
    // A storage failure is fatal for the shards involved: openraft stops them.
    for job in jobs {
        applier::fail(job, msg);
    }
}

#[cfg(test)]
mod tests {
    use chorus_streams::{Command, Envelope};
    use chorus_types::{Millis, PublisherId, StreamKey, StreamName, StreamType};
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;
    use crate::db::Cf;
    use crate::keys::{self, RaftMeta};
    use crate::raft_types::{Entry, ShardRequest, StoredMembership};

    fn meta(db: &Db, shard: ShardId, what: RaftMeta) -> Option<Vec<u8>> {
        db.raw().get_cf(db.cf(Cf::RaftMeta).unwrap(), keys::raft_meta(shard, what)).unwrap()
    }

    #[test]
    fn an_apply_that_fails_leaves_the_log_writes_of_its_group_intact() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let (broken, healthy) = (ShardId(3), ShardId(5));
        let key =
            StreamKey::new(PublisherId::new("alice").unwrap(), StreamName::new("room").unwrap());
        // A stream record that cannot be decoded: applying a post to it fails.
        db.raw()
            .put_cf(db.cf(Cf::Streams).unwrap(), keys::stream_prefix(broken, &key), b"{not json")
            .unwrap();
        let post = Envelope {
            time: Millis(1),
            by: "alice".into(),
            command: Command::Post {
                key,
                message_type: StreamType::new("Chat/message").unwrap(),
                content: "hi".into(),
                instructions: None,
                client_msg_id: None,
            },
        };
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(ShardRequest::new(vec![post])),
        };
        let (reply, mut applied) = oneshot::channel();
        let job = Job {
            shard: broken,
            applied: (None, StoredMembership::default()),
            entries: vec![entry],
            reply,
        };
        let (written, mut purged) = oneshot::channel();
        let purge = LogOp::Purge { shard: healthy, upto: 7, purged: b"7".to_vec(), written };
        let (sync_tx, _sync_rx) = mpsc::channel();

        commit(&db, &StreamCache::default(), &sync_tx, Group { log: vec![purge], jobs: vec![job] });

        assert!(applied.try_recv().unwrap().is_err(), "the apply fails");
        assert!(purged.try_recv().unwrap().is_ok(), "the log operation does not");
        assert_eq!(meta(&db, healthy, RaftMeta::LastPurged).as_deref(), Some(&b"7"[..]));
        assert_eq!(meta(&db, broken, RaftMeta::Applied), None, "nothing of the apply is written");
    }
}
