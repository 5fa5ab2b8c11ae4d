//! A bound on administrative waits for a Raft quorum (membership changes, meta-record writes).
//!
//! openraft answers such a call only once a quorum committed it, and waits without a bound
//! of its own; with a quorum gone (two of three nodes down) an `admin` command, the handler
//! serving it and the rebalancer's round would wait for good. Bounded, the command fails with
//! a clear error and the rebalancer tries again on its next round. A change that timed out may
//! still commit later: every caller re-reads the state before it acts again.

use std::future::Future;
use std::time::Duration;

/// How long a membership change or meta write may wait for its quorum: long past an election
/// and a slow disk, short enough for an operator to see the failure.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[error("no quorum committed the change within {}s; it may still apply later", PATIENCE.as_secs())]
pub struct QuorumTimeout;

/// `call`, or [`QuorumTimeout`] once it waited [`PATIENCE`].
pub(crate) async fn bounded<F: Future>(call: F) -> Result<F::Output, QuorumTimeout> {
    tokio::time::timeout(PATIENCE, call).await.map_err(|_| QuorumTimeout)
}
