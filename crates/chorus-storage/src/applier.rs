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
use chorus_types::{MessageRecord, ShardId};
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

/// Most jobs folded into one write.
const MAX_GROUP: usize = 256;

/// What applying one shard's entries produced.
pub struct Applied {
    pub responses: Vec<ShardResponse>,
    pub applied: AppliedState,
    /// Committed messages in ordinal order, for listeners.
    pub messages: Vec<MessageRecord>,
    /// Whether an entry may have changed access (anything but posts): cached access contexts
    /// must be reloaded.
    pub access_changed: bool,
}

struct Job {
    shard: ShardId,
    applied: AppliedState,
    entries: Vec<Entry>,
    reply: oneshot::Sender<Result<Applied>>,
}

/// Handle to the applier thread; cheap to clone. The thread stops when every handle is dropped.
#[derive(Clone)]
pub struct Applier {
    // Declared before `_thread`: the channel must close before the thread is joined.
    tx: mpsc::Sender<Job>,
    _thread: std::sync::Arc<Threads>,
}

impl Applier {
    pub fn start(db: Db) -> Result<Applier> {
        let (tx, rx) = mpsc::channel::<Job>();
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
            .send(Job { shard, applied, entries, reply })
            .map_err(|_| StorageError::WriterStopped)?;
        rx.await.map_err(|_| StorageError::WriterStopped)?
    }
}

/// Computes one job's outcomes and adds its writes (and applied state) to `batch`.
fn compute(db: &Db, job: &mut Job, batch: &mut WriteBatch) -> Result<Applied> {
    let state = RocksState { db, shard: job.shard };
    let mut overlay = Overlay::new(&state);
    let mut applied = job.applied.clone();
    let mut responses = Vec::with_capacity(job.entries.len());
    let mut access_changed = false;
    for entry in std::mem::take(&mut job.entries) {
        applied.0 = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => responses.push(ShardResponse::default()),
            EntryPayload::Normal(req) => {
                access_changed |=
                    req.envelopes.iter().any(|e| !matches!(e.command, Command::Post { .. }));
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
    let messages = writes
        .into_iter()
        .filter_map(|w| match w {
            Write::Message(m) => Some(m),
            _ => None,
        })
        .collect();
    Ok(Applied { responses, applied, messages, access_changed })
}

fn apply_loop(db: Db, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let mut batch = WriteBatch::default();
        let results: Result<Vec<Applied>> =
            jobs.iter_mut().map(|job| compute(&db, job, &mut batch)).collect();
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
            Ok(applied) => {
                for (job, a) in jobs.into_iter().zip(applied) {
                    let _ = job.reply.send(Ok(a));
                }
            }
            Err(e) => {
                // A storage failure is fatal for the shards involved: openraft stops them.
                tracing::error!(error = %e, jobs = jobs.len(), "applying committed entries failed");
                let msg = e.to_string();
                for job in jobs {
                    let _ =
                        job.reply.send(Err(StorageError::Io(std::io::Error::other(msg.clone()))));
                }
            }
        }
    }
}
