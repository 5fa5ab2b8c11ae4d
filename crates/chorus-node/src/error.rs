//! Errors of starting a node, and the mapping of internal failures to wire errors.

use chorus_api::ServiceError;
use chorus_types::{ApiError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage: {0}")]
    Storage(#[from] chorus_storage::StorageError),
    #[error("shard groups: {0}")]
    Start(#[from] chorus_raft::StartError),
    #[error("cluster config: {0}")]
    Config(String),
    #[error("serving peers: {0}")]
    Serve(String),
}

/// A storage failure on a request path: the client sees `internal`, the log has the cause.
pub(crate) fn internal(e: chorus_storage::StorageError) -> ServiceError {
    tracing::error!(error = %e, "storage failure on a request");
    ApiError::internal("storage failure").into()
}

pub(crate) fn err(code: ErrorCode, message: &str) -> ServiceError {
    ApiError::new(code, message).into()
}
