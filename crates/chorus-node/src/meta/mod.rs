//! The meta group: cluster membership (node → address, active/draining) and shard placement
//! (shard → its three voters), replicated in one more Raft group, plus the rebalancer that
//! moves replicas until the placement is even.
//!
//! # Layout
//! - [`state`]: the record and the admin changes to it (pure).
//! - [`planner`]: the next replica move (pure).
//! - [`store`]: the record in the meta group (compare-and-set through Raft).
//! - [`rebalancer`]: the task on the meta leader that makes the moves (its learner
//!   housekeeping in `rebalancer/learners.rs`).
//! - [`admin`]: `add-node` / `remove-node` on the meta leader, forwarded from any node.

pub mod admin;
pub mod planner;
pub mod rebalancer;
pub mod state;
pub mod store;

pub use store::META_GROUP;
