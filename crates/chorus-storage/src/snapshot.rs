//! Shard snapshots: the shard's key range of every state column family, written to a file.
//!
//! Format: `CHSNAP1\n`, `u32` length + JSON [`SnapshotMeta`], then records
//! `u8 cf-tag ‖ u32 key-len ‖ key ‖ u32 value-len ‖ value`, then the end tag `0xff`.
//! Keys keep their shard prefix, so a file installs verbatim on any replica of the shard.
//!
//! The export reads one RocksDB snapshot, so the applied log id in the header and the data
//! agree even while `apply` keeps running. Installing replaces the shard's range in one
//! `WriteBatch`, so a crash leaves either the old state or the new one.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write as _};
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use chorus_types::ShardId;
use rocksdb::{IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::db::{Cf, Db, to_json};
use crate::error::{Result, StorageError};
use crate::keys::{self, RaftMeta};
use crate::raft_types::{LogId, SnapshotMeta, StoredMembership};

const MAGIC: &[u8; 8] = b"CHSNAP1\n";
const END: u8 = 0xff;

/// The current snapshot of a shard, as recorded in `raft_meta`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotPointer {
    pub meta: SnapshotMeta,
    pub file: String,
}

/// The applied state stored beside the data: `(last applied log id, membership)`.
pub type AppliedState = (Option<LogId>, StoredMembership);

pub fn read_applied(db: &Db, shard: ShardId) -> Result<AppliedState> {
    Ok(db
        .get_json(Cf::RaftMeta, &keys::raft_meta(shard, RaftMeta::Applied), "applied state")?
        .unwrap_or_default())
}

pub fn read_pointer(db: &Db, shard: ShardId) -> Result<Option<SnapshotPointer>> {
    db.get_json(Cf::RaftMeta, &keys::raft_meta(shard, RaftMeta::Snapshot), "snapshot pointer")
}

pub fn pointer_path(db: &Db, pointer: &SnapshotPointer) -> PathBuf {
    db.snapshot_dir().join(&pointer.file)
}

fn unique_suffix() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn write_u32(w: &mut impl std::io::Write, n: usize) -> Result<()> {
    let n = u32::try_from(n).map_err(|_| StorageError::BadSnapshot("record larger than 4 GiB"))?;
    w.write_all(&n.to_be_bytes())?;
    Ok(())
}

/// Exports the shard to a new file and makes it the current snapshot.
pub fn export(db: &Db, shard: ShardId) -> Result<SnapshotPointer> {
    let started = Instant::now();
    let snap = db.raw().snapshot();
    let applied_key = keys::raft_meta(shard, RaftMeta::Applied);
    let (last_log_id, last_membership): AppliedState = match snap
        .get_cf(db.cf(Cf::RaftMeta)?, &applied_key)?
    {
        Some(v) => serde_json::from_slice(&v).map_err(StorageError::corrupt("applied state"))?,
        None => AppliedState::default(),
    };
    let suffix = unique_suffix();
    let snapshot_id = match &last_log_id {
        Some(id) => format!("{shard}-{}-{}-{suffix}", id.leader_id.term, id.index),
        None => format!("{shard}-0-0-{suffix}"),
    };
    let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id: snapshot_id.clone() };
    let file_name = format!("shard-{snapshot_id}.snap");
    let tmp = db.snapshot_dir().join(format!("{file_name}.tmp"));
    let mut out = BufWriter::new(File::create(&tmp)?);
    out.write_all(MAGIC)?;
    let meta_bytes = to_json(&meta)?;
    write_u32(&mut out, meta_bytes.len())?;
    out.write_all(&meta_bytes)?;
    let (start, end) = keys::shard_range(shard);
    for cf in Cf::STATE {
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snap);
        ro.set_iterate_upper_bound(end.clone());
        let iter = db.raw().iterator_cf_opt(
            db.cf(cf)?,
            ro,
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            out.write_all(&[cf.tag()])?;
            write_u32(&mut out, k.len())?;
            out.write_all(&k)?;
            write_u32(&mut out, v.len())?;
            out.write_all(&v)?;
        }
    }
    out.write_all(&[END])?;
    let file = out.into_inner().map_err(|e| StorageError::Io(e.into_error()))?;
    file.sync_all()?;
    let path = db.snapshot_dir().join(&file_name);
    std::fs::rename(&tmp, &path)?;
    sync_dir(&db.snapshot_dir())?;
    let pointer = SnapshotPointer { meta, file: file_name };
    let mut batch = WriteBatch::default();
    let replaced = replace_pointer(db, shard, &pointer, &mut batch)?;
    record_pointer(db, batch, replaced)?;
    crate::metrics::SNAPSHOTS_BUILT.inc();
    crate::metrics::SNAPSHOT_BUILD_SECONDS.observe(started.elapsed().as_secs_f64());
    Ok(pointer)
}

/// Makes a directory's entries (a file created or renamed into it) durable.
fn sync_dir(dir: &std::path::Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Writes the batch naming the new snapshot, synced, then removes the file it replaced.
/// Synced before the old file goes (and after the new file's directory entry, see
/// [`sync_dir`]): after a power loss the shard must never point at a snapshot file that is not
/// on disk.
fn record_pointer(db: &Db, batch: WriteBatch, replaced: Option<PathBuf>) -> Result<()> {
    db.write_synced(batch)?;
    remove_replaced(replaced);
    Ok(())
}

/// Records `pointer` as current, in `batch`, and returns the file of the snapshot it
/// replaces: the caller deletes it once the batch is written (before, a failed or interrupted
/// write would leave the recorded pointer naming a deleted file).
fn replace_pointer(
    db: &Db,
    shard: ShardId,
    pointer: &SnapshotPointer,
    batch: &mut WriteBatch,
) -> Result<Option<PathBuf>> {
    let old = read_pointer(db, shard)?;
    batch.put_cf(
        db.cf(Cf::RaftMeta)?,
        keys::raft_meta(shard, RaftMeta::Snapshot),
        to_json(pointer)?,
    );
    Ok(old.filter(|old| old.file != pointer.file).map(|old| pointer_path(db, &old)))
}

/// Deletes a replaced snapshot's file. A leftover file is harmless; it is only garbage.
fn remove_replaced(file: Option<PathBuf>) {
    if let Some(path) = file {
        let _ = std::fs::remove_file(path);
    }
}

fn read_u32(r: &mut impl Read) -> Result<usize> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b) as usize)
}

fn read_bytes(r: &mut impl Read, len: usize) -> Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    r.read_exact(&mut v)?;
    Ok(v)
}

/// Replaces the shard's state with the snapshot in `bytes` (already received in full), keeps
/// a copy as the shard's current snapshot, and returns its applied state.
pub fn install(db: &Db, shard: ShardId, meta: &SnapshotMeta, bytes: &[u8]) -> Result<()> {
    let started = Instant::now();
    let mut r = BufReader::new(bytes);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(StorageError::BadSnapshot("bad magic"));
    }
    let meta_len = read_u32(&mut r)?;
    let file_meta: SnapshotMeta = serde_json::from_slice(&read_bytes(&mut r, meta_len)?)
        .map_err(StorageError::corrupt("snapshot meta"))?;
    if file_meta.last_log_id != meta.last_log_id {
        return Err(StorageError::BadSnapshot("file does not match its meta"));
    }
    let (start, end) = keys::shard_range(shard);
    let mut batch = WriteBatch::default();
    for cf in Cf::STATE {
        batch.delete_range_cf(db.cf(cf)?, &start, &end);
    }
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag)?;
        if tag[0] == END {
            break;
        }
        let cf = Cf::from_tag(tag[0])
            .filter(|c| Cf::STATE.contains(c))
            .ok_or(StorageError::BadSnapshot("unknown column family"))?;
        let klen = read_u32(&mut r)?;
        let key = read_bytes(&mut r, klen)?;
        if key.as_slice() < start.as_slice() || key.as_slice() >= end.as_slice() {
            return Err(StorageError::BadSnapshot("key outside the shard"));
        }
        let vlen = read_u32(&mut r)?;
        let value = read_bytes(&mut r, vlen)?;
        batch.put_cf(db.cf(cf)?, key, value);
    }
    let applied: AppliedState = (meta.last_log_id, meta.last_membership.clone());
    batch.put_cf(
        db.cf(Cf::RaftMeta)?,
        keys::raft_meta(shard, RaftMeta::Applied),
        to_json(&applied)?,
    );
    let file_name = format!("shard-{}.snap", meta.snapshot_id);
    let path = db.snapshot_dir().join(&file_name);
    let mut f = File::create(&path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    sync_dir(&db.snapshot_dir())?;
    let pointer = SnapshotPointer { meta: meta.clone(), file: file_name };
    let replaced = replace_pointer(db, shard, &pointer, &mut batch)?;
    record_pointer(db, batch, replaced)?;
    crate::metrics::SNAPSHOTS_INSTALLED.inc();
    crate::metrics::SNAPSHOT_INSTALL_SECONDS.observe(started.elapsed().as_secs_f64());
    Ok(())
}
