//! The openraft type configuration shared by every shard group.

use std::io::Cursor;
use std::sync::Arc;

use chorus_streams::{Envelope, Outcome};
use serde::{Deserialize, Serialize};

/// The payload of a normal Raft entry: commands for streams of one shard, batched by the
/// stream actors (many posts to a stream become one entry).
///
/// The envelopes are shared, not owned: openraft clones an entry for each reader (the apply
/// of every entry, the replication to each follower), and a deep clone of every post's
/// strings cost ~1 % of a node's CPU. Stored as `{"envelopes": [...]}`, as a `Vec` was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardRequest {
    pub envelopes: Arc<[Envelope]>,
}

impl ShardRequest {
    pub fn new(envelopes: Vec<Envelope>) -> ShardRequest {
        ShardRequest { envelopes: envelopes.into() }
    }
}

/// One outcome per envelope of the entry, in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardResponse {
    pub outcomes: Vec<Outcome>,
}

openraft::declare_raft_types!(
    /// Chorus's shard groups: node ids are `u64`, snapshots are files.
    pub TypeConfig:
        D = ShardRequest,
        R = ShardResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

// `declare_raft_types!` in openraft 0.9 names `Cursor` unhygienically in a default it does not
// use here; keep the import so a future default does not break the build.
#[allow(dead_code)]
type _Unused = Cursor<Vec<u8>>;

pub type NodeId = u64;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type RaftStorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
