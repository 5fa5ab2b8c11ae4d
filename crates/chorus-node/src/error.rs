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

/// Why an access context could not be gathered. Each fails the request: access is never
/// computed from part of its inputs (see `access_ctx`).
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("storage: {0}")]
    Storage(#[from] chorus_storage::StorageError),
    /// A source on another shard could not be read where that shard is led.
    #[error("reading access source {key} failed: {error}")]
    Source { key: chorus_types::StreamKey, error: ApiError },
    /// A cluster member whose router is not (or no longer) there.
    #[error("no router to read access sources on other shards")]
    NoRouter,
    /// Sources kept moving between local and remote shards for every round.
    #[error("access sources did not settle")]
    Unsettled,
}

impl From<ContextError> for ServiceError {
    fn from(e: ContextError) -> ServiceError {
        match e {
            ContextError::Storage(e) => internal(e),
            other => {
                tracing::warn!(error = %other, "access context unavailable");
                ApiError::unavailable(
                    "an access rule, template or parent stream on another shard could not be \
                     read; retry",
                )
                .into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chorus_types::{PublisherId, StreamKey, StreamName};

    use super::*;

    /// An unreadable source fails closed: the caller is told to retry, never given an answer
    /// computed without it.
    #[test]
    fn an_unreadable_access_source_is_unavailable() {
        let Ok(name) = StreamName::new("Chat/room*") else { panic!("a valid name") };
        let key = StreamKey::new(PublisherId::app(), name);
        let timeout = ApiError::new(ErrorCode::Timeout, "no leader");
        for e in [ContextError::Source { key, error: timeout }, ContextError::Unsettled] {
            let service = ServiceError::from(e);
            assert_eq!(service.error.code, ErrorCode::Unavailable);
            assert!(service.error.retry_after_ms.is_some(), "retryable");
        }
    }
}
