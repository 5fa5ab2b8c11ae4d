//! One *access source*: a stream whose record or rows bear on the access of another stream —
//! a `<type>*` rule pseudo-stream, a template `<type>/`, an `inheritAccess` parent. It may
//! live on any shard, so it is read where that shard is led (see `access_ctx`).

use std::time::Duration;

use chorus_api::{Caller, ServiceError};
use chorus_storage::{Db, StorageError, reads};
use chorus_types::{AccessRow, ShardId, StreamKey, StreamRecord};
use serde::{Deserialize, Serialize};

/// How long an access source read from another shard stays in force.
///
/// A node holds every shard only on a 3-node cluster; beyond that, a change to a `<type>*`
/// row, a template or an inheritAccess parent on a shard this node does not hold never
/// applies here, so nothing would tell its cached copy to go. Such copies (and contexts
/// built from them) are read again after this long: **a change on another shard takes
/// effect within 1 s** on every node. The cost is at most one forwarded read per source per
/// node per second, and one local re-read of an active stream's context per second — never a
/// forwarded read per post. Where the node does hold the source's shard, applying a change
/// there drops its copy at once (the hub's per-shard access epoch), so a 3-node cluster sees
/// changes within replica lag, as before.
pub const SOURCE_TTL: Duration = Duration::from_secs(1);

/// What one source contributes: its record (absent for a `<type>*` pseudo-stream, which only
/// has rows, and for a stream that does not exist) and its access rows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceRows {
    pub stream: Option<StreamRecord>,
    #[serde(default)]
    pub rows: Vec<AccessRow>,
}

impl SourceRows {
    /// This replica's copy of `key` (on `shard`). Blocking: run on the blocking pool.
    pub fn read_local(db: &Db, shard: ShardId, key: &StreamKey) -> Result<Self, StorageError> {
        let stream = reads::stream(db, shard, key)?;
        // A stream that does not exist has no rows that count; a rule pseudo-stream has no
        // record but may have rows.
        if stream.is_none() && !key.name.is_type_rule() {
            return Ok(SourceRows::default());
        }
        let rows = reads::access_rows(db, shard, key)?;
        Ok(SourceRows { stream, rows })
    }
}

/// Reads one source on its shard's leader. A [`Node`](crate::Node) reads its replica after a
/// read barrier (so the answer includes every acknowledged change); the cluster
/// [`Router`](crate::cluster::Router) sends the read to the shard's leader. It is not part of
/// `StreamService`: clients never ask for raw rows, only nodes assembling a context do.
#[async_trait::async_trait]
pub trait SourceReader: Send + Sync {
    async fn access_source(
        &self,
        caller: &Caller,
        key: &StreamKey,
    ) -> Result<SourceRows, ServiceError>;
}
