//! The Raft log side of the group commit: the operations every shard's log store queues on
//! the node's [`WriteThread`], and the syncer thread that makes them durable with one fsync
//! per group.
//!
//! Appends are readable from the log store's in-memory tail at once; truncate and purge wait
//! until they are written. A callback is completed only after an fsync that began after its
//! batch was written, so openraft never counts an entry that is not on disk.

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
use crate::write_thread::{Work, WriteThread};

pub(crate) enum LogOp {
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

/// A shard's handle to the write thread's log side; cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    thread: WriteThread,
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
    /// A log writer on its own write thread (tests; a node shares one thread, see
    /// [`WriteThread::log_writer`]).
    pub fn start(db: Db) -> Result<LogWriter> {
        Ok(WriteThread::start(db)?.log_writer())
    }

    pub(crate) fn new(thread: WriteThread) -> LogWriter {
        LogWriter { thread }
    }

    async fn submit(&self, op: LogOp, written: oneshot::Receiver<Result<()>>) -> Result<()> {
        self.thread.send(Work::Log(op))?;
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
        self.thread.send(Work::Log(LogOp::Append { shard, entries, flushed }))
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

pub(crate) fn add_to_batch(db: &Db, batch: &mut WriteBatch, op: &LogOp) -> Result<()> {
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

/// Answers a group's log operations once their batch is written (or failed): truncates and
/// purges at once, appends through the syncer after its next fsync.
pub(crate) fn answer(
    ops: Vec<LogOp>,
    failure: Option<&str>,
    sync_tx: &mpsc::Sender<LogFlushed<TypeConfig>>,
) {
    for op in ops {
        let (written, flushed) = match op {
            LogOp::Append { flushed, .. } => (None, Some(flushed)),
            LogOp::Truncate { written, .. } | LogOp::Purge { written, .. } => (Some(written), None),
        };
        match failure {
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
                if let Some(w) = written {
                    let _ = w.send(Err(StorageError::Io(std::io::Error::other(msg.to_string()))));
                }
                if let Some(cb) = flushed {
                    cb.log_io_completed(Err(std::io::Error::other(msg.to_string())));
                }
            }
        }
    }
}

pub(crate) fn sync_loop(db: Db, rx: mpsc::Receiver<LogFlushed<TypeConfig>>) {
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
