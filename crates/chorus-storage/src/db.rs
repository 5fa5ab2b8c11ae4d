//! Opening the node's one RocksDB and naming its column families.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DB, Options};

use crate::error::{Result, StorageError};

/// The column families. Every key starts with its shard (see [`crate::keys`]), except in `meta`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Cf {
    /// Raft log entries of all shards: `shard ‖ index`.
    RaftLog,
    /// Vote, committed, purged, applied state and snapshot pointer per shard.
    RaftMeta,
    Streams,
    /// `stream ‖ ordinal`.
    Messages,
    /// `stream ‖ userId` → participant.
    Participants,
    /// `stream ‖ state ‖ userId` → participant, for listings by state.
    ParticipantIndex,
    /// `stream` → the stream's access rows.
    Access,
    /// `stream ‖ clientMsgId` → first ordinal and time.
    Dedupe,
    /// Node-level metadata (shard count).
    Meta,
}

impl Cf {
    pub const ALL: [Cf; 9] = [
        Cf::RaftLog,
        Cf::RaftMeta,
        Cf::Streams,
        Cf::Messages,
        Cf::Participants,
        Cf::ParticipantIndex,
        Cf::Access,
        Cf::Dedupe,
        Cf::Meta,
    ];

    /// The column families that make up a shard's replicated state (what a snapshot carries).
    pub const STATE: [Cf; 6] =
        [Cf::Streams, Cf::Messages, Cf::Participants, Cf::ParticipantIndex, Cf::Access, Cf::Dedupe];

    pub fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => "raft_log",
            Cf::RaftMeta => "raft_meta",
            Cf::Streams => "streams",
            Cf::Messages => "messages",
            Cf::Participants => "participants",
            Cf::ParticipantIndex => "participant_index",
            Cf::Access => "access",
            Cf::Dedupe => "dedupe",
            Cf::Meta => "meta",
        }
    }

    /// Stable one-byte tag used in snapshot files.
    pub fn tag(self) -> u8 {
        match self {
            Cf::RaftLog => 0,
            Cf::RaftMeta => 1,
            Cf::Streams => 2,
            Cf::Messages => 3,
            Cf::Participants => 4,
            Cf::ParticipantIndex => 5,
            Cf::Access => 6,
            Cf::Dedupe => 7,
            Cf::Meta => 8,
        }
    }

    pub fn from_tag(tag: u8) -> Option<Cf> {
        Cf::ALL.into_iter().find(|c| c.tag() == tag)
    }
}

/// The node's database. Cheap to clone.
/// Memtable size per column family, where RocksDB's default (64 MiB) is not the right one.
///
/// Every post inserts into the memtables of `messages` (its message), `streams` (a new
/// version of its stream's record) and `raft_meta` (the shard's applied id). A skiplist
/// insert walks the list's height with a cache miss per hop, and was the largest single cost
/// on the post path (~11 % of the server's CPU). The hot few-key families keep every version
/// until a flush, which keeps only the latest, so small memtables there cost almost no flush
/// work; `messages` stays large enough to flush only every few seconds at full load.
/// Interleaved A/B runs (`loadgen`, 256 in flight, 64 MiB everywhere against these):
/// 168–174 → 129–150 µs of server CPU per post.
fn write_buffer_size(cf: Cf) -> Option<usize> {
    match cf {
        Cf::Streams | Cf::RaftMeta | Cf::Meta => Some(4 << 20),
        Cf::Messages => Some(16 << 20),
        Cf::RaftLog => Some(64 << 20),
        _ => None,
    }
}

/// Column family options whose memtable remembers, per shard, where its last insert went.
///
/// Keys of one shard sit together (every key but `meta`'s starts with its 2-byte shard id),
/// and a shard's writes go near its last ones: its next Raft log index, its streams' next
/// ordinals, new versions of the same stream records and applied id. Without a hint every
/// insert walks the
/// skiplist down from its top level, a cache miss per hop (`FindSpliceForLevel`, the largest
/// single symbol in a node's profile); with one it starts from the shard's last splice and
/// climbs only as far as it must. RocksDB takes this option only from an options string.
fn insert_hinted_options() -> Result<Options> {
    Options::default()
        .get_options_from_string("memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.2")
        .map_err(StorageError::Rocks)
}

#[derive(Clone)]
pub struct Db {
    inner: Arc<DB>,
    dir: PathBuf,
}

const SHARD_COUNT_KEY: &[u8] = b"shard_count";

impl Db {
    /// Opens (or creates) the database under `dir/db`; snapshots live in `dir/snapshots`.
    pub fn open(dir: &Path) -> Result<Db> {
        std::fs::create_dir_all(dir.join("snapshots"))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        opts.set_keep_log_file_num(4);
        // Writers that wait for RocksDB's write group block instead of spinning and yielding:
        // with more writer threads than cores, spinning only steals the CPU the leader needs.
        opts.set_enable_write_thread_adaptive_yield(false);
        // Memtable inserts with a hint (below) need the write group's leader to insert every
        // batch of the group itself; nearly all of the node's writes come from its one write
        // thread, so concurrent inserts bought nothing anyway.
        opts.set_allow_concurrent_memtable_write(false);
        let cfs = Cf::ALL.iter().map(|cf| -> Result<ColumnFamilyDescriptor> {
            let mut o = insert_hinted_options()?;
            let mut table = BlockBasedOptions::default();
            table.set_bloom_filter(10.0, false);
            o.set_block_based_table_factory(&table);
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            if let Some(bytes) = write_buffer_size(*cf) {
                o.set_write_buffer_size(bytes);
            }
            Ok(ColumnFamilyDescriptor::new(cf.name(), o))
        });
        let cfs = cfs.collect::<Result<Vec<_>>>()?;
        let db = DB::open_cf_descriptors(&opts, dir.join("db"), cfs).map_err(|e| {
            // RocksDB holds `db/LOCK` for as long as a process has the database open.
            if e.as_ref().contains("LOCK") && e.as_ref().contains("lock") {
                StorageError::InUse(dir.display().to_string())
            } else {
                StorageError::Rocks(e)
            }
        })?;
        Ok(Db { inner: Arc::new(db), dir: dir.to_path_buf() })
    }

    /// Writes `batch` and syncs the WAL before returning: for the rare writes that must be on
    /// disk before anything else happens (a vote, the shard count, a snapshot pointer).
    pub fn write_synced(&self, batch: rocksdb::WriteBatch) -> Result<()> {
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        self.inner.write_opt(batch, &wo)?;
        Ok(())
    }

    pub fn raw(&self) -> &DB {
        &self.inner
    }

    pub fn cf(&self, cf: Cf) -> Result<&ColumnFamily> {
        self.inner.cf_handle(cf.name()).ok_or(StorageError::MissingColumnFamily(cf.name()))
    }

    /// The data directory this database lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.dir.join("snapshots")
    }

    /// The shard count is fixed when the data dir is created: reads the stored count, or
    /// stores `wanted` on first start. A different `wanted` later is an error, because streams
    /// would map to other shards than the ones holding their data.
    pub fn shard_count(&self, wanted: u16) -> Result<u16> {
        let meta = self.cf(Cf::Meta)?;
        if let Some(v) = self.inner.get_cf(meta, SHARD_COUNT_KEY)? {
            let bytes: [u8; 2] =
                v.as_slice().try_into().map_err(|_| StorageError::BadSnapshot("shard count"))?;
            let stored = u16::from_be_bytes(bytes);
            if stored != wanted {
                return Err(StorageError::ShardCountMismatch { stored, asked: wanted });
            }
            return Ok(stored);
        }
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(meta, SHARD_COUNT_KEY, wanted.to_be_bytes());
        self.write_synced(batch)?;
        Ok(wanted)
    }

    /// The stored shard count, if this data dir was initialised.
    pub fn stored_shard_count(&self) -> Result<Option<u16>> {
        let meta = self.cf(Cf::Meta)?;
        Ok(self.inner.get_cf(meta, SHARD_COUNT_KEY)?.and_then(|v| {
            let bytes: [u8; 2] = v.as_slice().try_into().ok()?;
            Some(u16::from_be_bytes(bytes))
        }))
    }

    pub fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        cf: Cf,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>> {
        match self.inner.get_pinned_cf(self.cf(cf)?, key)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(StorageError::corrupt(what))?)),
            None => Ok(None),
        }
    }
}

pub fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(StorageError::Encode)
}
