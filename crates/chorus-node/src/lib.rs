//! A storage node: the shard groups of this node, a stream actor per active stream on the
//! shards it leads, and the [`chorus_api::StreamService`] the edge calls.
//!
//! ```text
//!  edge ──StreamService──▶ Node ──reads──▶ RocksDB (after a linearizable read barrier)
//!                           │
//!                           └─writes─▶ StreamActor (one per active stream, bounded mailbox)
//!                                        access check on a fresh AccessCtx per batch
//!                                        ─▶ ShardProposer: the entries of every actor of the
//!                                           shard ─▶ one Raft entry (client_write_ff)
//!                                        reply with each Outcome after commit + apply
//!  StateMachine::apply ──committed messages──▶ Hub ──▶ listen tasks ──▶ sessions
//! ```
//!
//! # Layout
//! - [`node`]: starting and stopping a node ([`Node`]).
//! - `access_ctx`: gathering what the access calculation needs for one stream, from this
//!   node or, for sources on shards it does not lead, from their leaders (`access_source`,
//!   with the node's copies in `source_cache`).
//! - `authorize`: which level each write needs, turning a request into a [`chorus_streams::Command`].
//! - `actor` / `actors`: the stream actor and its registry.
//! - `proposer`: one task per shard merging the actors' entries into one Raft entry.
//! - `quorum`: the bound on administrative waits for a Raft quorum.
//! - `hub`: committed messages and ephemerals to local listeners.
//! - `ephemeral_limit`: per-stream token buckets for ephemerals to big rooms.
//! - `listen`: backlog-then-live delivery without gaps or duplicates.
//! - `service`: the `StreamService` implementation over this node's shards.
//! - [`cluster`]: the gRPC services a cluster member offers its peers, and the [`cluster::Router`]
//!   that runs each operation on the stream's shard leader.
//! - [`metrics`]: `chorus_node_*` (posts by code, post and commit latency, actors, listens) and
//!   the scrape-time collectors a node registers (Raft per shard, RocksDB, disk).

mod access_ctx;
mod access_source;
mod actor;
mod actors;
mod authorize;
pub mod cluster;
mod ephemeral_limit;
mod error;
mod hub;
mod in_flight;
mod listen;
pub mod meta;
pub mod metrics;
pub mod node;
mod proposer;
mod quorum;
mod service;
mod source_cache;

pub use error::NodeError;
pub use node::{ActorSettings, ClusterSpec, Node, NodeConfig};
