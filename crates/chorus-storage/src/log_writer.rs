//! The group-commit log writer: one thread writes the Raft log appends of every shard, another
//! makes them durable with one fsync per group.
//!
//! ```text
//!  LogStore::append (shard 3) ─┐                     ┌─▶ "written" (entries readable)
//!  LogStore::append (shard 9) ─┼─▶ writer thread ────┤
//!  LogStore::truncate (s 12)  ─┘  drain queue,       └─▶ syncer thread: drain, one
//!                                 one WriteBatch,          flush_wal(sync), then every
//!                                 no sync                  LogFlushed callback
//! ```
//!
//! Ordering: the writer applies operations in arrival order (one FIFO for every shard), so a
//! shard's truncate or purge never overtakes an earlier append. Appends are readable from the
//! log store's in-memory tail at once; truncate and purge wait until they are written.
//! A callback is completed only after an fsync that began after its batch was written, so
//! openraft never counts an entry that is not on disk.

use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use chorus_types::ShardId;
use openraft::storage::LogFlushed;
use rocksdb::WriteBatch;
use tokio::sync::oneshot;

use crate::db::{Cf, Db};
use crate::error::{Result, StorageError};
use crate::keys;
use crate::metrics;
use crate::raft_types::TypeConfig;

/// Most operations folded into one `WriteBatch`, to bound the latency of the first.
const MAX_GROUP: usize = 4096;

enum LogOp {
    Append {
        shard: ShardId,
        entries: Vec<(u64, Vec<u8>)>,
        flushed: LogFlushed<TypeConfig>,
    },
    /// Delete entries with index ≥ `from`.
    Truncate {
        shard: ShardId,
        from: u64,
        written: oneshot::Sender<Result<()>>,
    },
    /// Delete entries with index ≤ `upto` and record the last purged log id.
    Purge {
        shard: ShardId,
        upto: u64,
        purged: Vec<u8>,
        written: oneshot::Sender<Result<()>>,
    },
}

/// Handle to the writer; cheap to clone. The threads stop when every handle is dropped, and
/// the last handle waits for them (see [`Threads`]).
#[derive(Clone)]
pub struct LogWriter {
    // Declared before `_threads`: the channel must close before the threads are joined.
    tx: mpsc::Sender<LogOp>,
    _threads: std::sync::Arc<Threads>,
}

/// Background threads joined when their last owner goes. They hold the database, so joining
/// them means RocksDB is closed by the time the store is dropped, never concurrently with
/// process exit (which RocksDB answers with `pthread lock: Invalid argument` and an abort).
pub struct Threads {
    handles: std::sync::Mutex<Vec<thread::JoinHandle<()>>>,
}

impl Threads {
    pub fn new(handles: Vec<thread::JoinHandle<()>>) -> std::sync::Arc<Threads> {
        std::sync::Arc::new(Threads { handles: std::sync::Mutex::new(handles) })
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            if h.join().is_err() {
                tracing::error!("a storage thread panicked");
            }
        }
    }
}

impl LogWriter {
    pub fn start(db: Db) -> Result<LogWriter> {
        let (tx, rx) = mpsc::channel::<LogOp>();
        let (sync_tx, sync_rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let sync_db = db.clone();
        let syncer = thread::Builder::new()
            .name("chorus-log-sync".into())
            .spawn(move || sync_loop(sync_db, sync_rx))?;
        let writer = thread::Builder::new()
            .name("chorus-log-writer".into())
            .spawn(move || write_loop(db, rx, sync_tx))?;
        // Writer first: its exit closes the syncer's channel.
        Ok(LogWriter { tx, _threads: Threads::new(vec![writer, syncer]) })
    }

    async fn submit(&self, op: LogOp, written: oneshot::Receiver<Result<()>>) -> Result<()> {
        self.tx.send(op).map_err(|_| StorageError::WriterStopped)?;
        written.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Queues the entries; `flushed` is completed once they are durable. Operations are
    /// written in the order they are queued, so a later truncate or purge of the shard never
    /// overtakes this append.
    pub fn append(
        &self,
        shard: ShardId,
        entries: Vec<(u64, Vec<u8>)>,
        flushed: LogFlushed<TypeConfig>,
    ) -> Result<()> {
        self.tx
            .send(LogOp::Append { shard, entries, flushed })
            .map_err(|_| StorageError::WriterStopped)
    }

    pub async fn truncate(&self, shard: ShardId, from: u64) -> Result<()> {
        let (written, rx) = oneshot::channel();
        self.submit(LogOp::Truncate { shard, from, written }, rx).await
    }

    pub async fn purge(&self, shard: ShardId, upto: u64, purged: Vec<u8>) -> Result<()> {
        let (written, rx) = oneshot::channel();
        self.submit(LogOp::Purge { shard, upto, purged, written }, rx).await
    }
}

fn add_to_batch(db: &Db, batch: &mut WriteBatch, op: &LogOp) -> Result<()> {
    let log = db.cf(Cf::RaftLog)?;
    match op {
        LogOp::Append { shard, entries, .. } => {
            for (index, bytes) in entries {
                batch.put_cf(log, keys::log_entry(*shard, *index), bytes);
            }
        }
        LogOp::Truncate { shard, from, .. } => {
            let (_, end) = keys::shard_range(*shard);
            batch.delete_range_cf(log, keys::log_entry(*shard, *from).to_vec(), end);
        }
        LogOp::Purge { shard, upto, purged, .. } => {
            let (start, _) = keys::shard_range(*shard);
            batch.delete_range_cf(
                log,
                start,
                keys::log_entry(*shard, upto.saturating_add(1)).to_vec(),
            );
            let meta = db.cf(Cf::RaftMeta)?;
            batch.put_cf(meta, keys::raft_meta(*shard, keys::RaftMeta::LastPurged), purged);
        }
    }
    Ok(())
}

fn write_loop(db: Db, rx: mpsc::Receiver<LogOp>, sync_tx: mpsc::Sender<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        tracing::trace!(ops = ops.len(), "log write group");
        let mut batch = WriteBatch::default();
        let built: Result<()> = ops.iter().try_for_each(|op| add_to_batch(&db, &mut batch, op));
        let result = built.and_then(|()| {
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(false);
            db.raw().write_opt(batch, &wo).map_err(StorageError::from)
        });
        let failure = result.as_ref().err().map(|e| e.to_string());
        for op in ops {
            let (written, flushed) = match op {
                LogOp::Append { flushed, .. } => (None, Some(flushed)),
                LogOp::Truncate { written, .. } | LogOp::Purge { written, .. } => {
                    (Some(written), None)
                }
            };
            match &failure {
                None => {
                    // The store may have given up waiting (shutdown); nothing to tell then.
                    if let Some(w) = written {
                        let _ = w.send(Ok(()));
                    }
                    if let Some(cb) = flushed
                        && let Err(mpsc::SendError(cb)) = sync_tx.send(cb)
                    {
                        cb.log_io_completed(Err(std::io::Error::other("log syncer stopped")));
                    }
                }
                Some(msg) => {
                    tracing::error!(error = %msg, "raft log write failed");
                    if let Some(w) = written {
                        let _ = w.send(Err(StorageError::Io(std::io::Error::other(msg.clone()))));
                    }
                    if let Some(cb) = flushed {
                        cb.log_io_completed(Err(std::io::Error::other(msg.clone())));
                    }
                }
            }
        }
    }
}

fn sync_loop(db: Db, rx: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        while let Ok(cb) = rx.try_recv() {
            pending.push(cb);
        }
        let started = Instant::now();
        tracing::trace!(appends = pending.len(), "log sync begins");
        let result = db.raw().flush_wal(true);
        tracing::trace!(us = started.elapsed().as_micros() as u64, "log sync done");
        metrics::LOG_FSYNC_SECONDS.observe(started.elapsed().as_secs_f64());
        metrics::LOG_FSYNCS.inc();
        metrics::GROUP_COMMIT_APPENDS.observe(pending.len() as f64);
        metrics::LOG_APPENDS.inc_by(pending.len() as u64);
        let failure = result.err().map(|e| e.to_string());
        if let Some(msg) = &failure {
            tracing::error!(error = %msg, "raft log fsync failed");
        }
        for cb in pending {
            match &failure {
                None => cb.log_io_completed(Ok(())),
                Some(msg) => cb.log_io_completed(Err(std::io::Error::other(msg.clone()))),
            }
        }
    }
}
