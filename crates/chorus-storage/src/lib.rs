//! Chorus's storage: one RocksDB per node holding the Raft logs of every shard, the Raft
//! metadata and the replicated stream state, with an openraft log store and state machine per
//! shard over that one database.
//!
//! ```text
//!  openraft (shard 0..S) ──append──▶ LogStore ─────┐
//!                                                  ├─▶ write thread: chorus_streams::apply_entry
//!  openraft (shard 0..S) ──apply──▶ StateMachine ──┘   for every waiting shard, then one
//!                                                      WriteBatch (log entries + state + applied
//!                                                      ids, no sync); applies are answered
//!                                                      (ApplyObserver: committed messages)
//!                                                           │
//!                                                           └─▶ syncer thread: one fsync for
//!                                                               all pending appends, then each
//!                                                               shard's LogFlushed callback
//! ```
//!
//! Group commit is what makes many shards cheap: a disk here does a few thousand fsyncs per
//! second, so every append of every shard that arrives while one fsync runs shares the next.
//! Entries are readable as soon as they are written and count for Raft only once the fsync
//! that covers them has returned.
//!
//! # Layout
//! - [`raft_types`]: the openraft type config and the entry payload.
//! - [`db`]: opening the database and its column families.
//! - [`keys`]: the key encodings (every key starts with its shard, so a shard is a key range).
//! - [`write_thread`]: the one thread that writes log appends and applied state together.
//! - [`log_writer`]: the log side of the write thread, and the syncer thread.
//! - [`log_store`]: `RaftLogStorage` per shard.
//! - [`state_machine`]: `RaftStateMachine` per shard.
//! - [`applier`]: the apply side of the write thread, shared by every shard's state machine.
//! - [`rocks_state`]: [`chorus_streams::StateRead`] over RocksDB.
//! - [`snapshot`]: export and import of a shard's key range.
//! - [`reads`]: the queries the node serves (history, participants, access rows).
//! - [`metrics`]: `chorus_storage_*`: fsync, group commit, apply and snapshot timings, and
//!   RocksDB and disk gauges read at scrape time.

pub mod applier;
pub mod db;
pub mod error;
pub mod keys;
pub mod log_store;
pub mod log_writer;
pub mod metrics;
pub mod raft_types;
pub mod reads;
pub mod rocks_state;
pub mod snapshot;
pub mod state_machine;
pub mod stream_cache;
pub mod write_thread;

pub use applier::Applier;
pub use db::Db;
pub use error::StorageError;
pub use log_store::LogStore;
pub use log_writer::LogWriter;
pub use raft_types::{ShardRequest, ShardResponse, TypeConfig};
pub use state_machine::{AccessChange, ApplyObserver, StateMachine};
pub use write_thread::WriteThread;
