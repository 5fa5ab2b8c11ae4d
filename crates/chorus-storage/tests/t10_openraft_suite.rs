//! The RocksDB log store and state machine pass openraft's storage conformance suite, on a
//! shard other than 0 so that key prefixing is exercised too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chorus_storage::{Applier, Db, LogStore, LogWriter, StateMachine, TypeConfig};
use chorus_types::ShardId;
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
        let db = Db::open(dir.path()).map_err(|e| openraft::StorageIOError::write(&e))?;
        let writer =
            LogWriter::start(db.clone()).map_err(|e| openraft::StorageIOError::write(&e))?;
        let shard = ShardId(7);
        let log = LogStore::new(db.clone(), shard, writer);
        let applier =
            Applier::start(db.clone()).map_err(|e| openraft::StorageIOError::write(&e))?;
        let sm = StateMachine::open(db, shard, applier, None)
            .await
            .map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).unwrap();
}
