//! Shard groups: starting one openraft group per shard over the node's storage, and the
//! network those groups talk over.
//!
//! A node runs `S` groups (one per shard) that share one RocksDB and one group-commit log
//! writer (`chorus-storage`). In single-node mode (`chorus dev`) every group has one voter and
//! never sends an RPC; [`network::LocalOnly`] makes that explicit by refusing any peer. The
//! multiplexed gRPC transport between nodes ([`grpc`]) is the other `RaftNetworkFactory`: one
//! HTTP/2 connection per peer pair carries every group's calls, batched.
//!
//! # Layout
//! - [`group`]: [`group::ShardGroup`], one shard's `Raft` handle, and [`group::start_groups`].
//! - [`network`]: the single-node transport; [`grpc`]: the cluster transport.
//! - [`metrics`]: per-shard Raft gauges (`chorus_raft_shard_*`), read at scrape time.

pub mod group;
pub mod grpc;
pub mod metrics;
pub mod network;

pub use group::{GroupHost, ShardGroup, StartError, start_groups};

pub type Raft = openraft::Raft<chorus_storage::TypeConfig>;
