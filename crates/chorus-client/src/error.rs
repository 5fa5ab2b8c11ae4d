//! The SDK's errors: what the server refused, and what went wrong on this side.

use std::sync::Arc;

use chorus_types::{ApiError, ErrorCode};

use crate::model::Stream;

/// A refusal from the server: the wire error object, plus the current stream when an
/// `ifMessageCount` precondition failed (409 `conflict`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{error}")]
pub struct ServerError {
    pub error: ApiError,
    pub stream: Option<Box<Stream>>,
}

impl ServerError {
    pub fn code(&self) -> ErrorCode {
        self.error.code
    }

    /// Whether the same request may succeed later unchanged. Only the codes the server marks
    /// retryable (`rate_limited`, `not_leader`, `unavailable`) and `timeout` (the outcome is
    /// unknown; a retry with the same `clientMsgId` is safe) are. Everything else, `internal`
    /// included, is final: retrying a request the server cannot handle would loop forever.
    pub fn is_transient(&self) -> bool {
        self.error.code.is_retryable() || self.error.code == ErrorCode::Timeout
    }
}

/// Why a token could not be obtained; returned by a [`crate::TokenProvider`].
pub type TokenError = Box<dyn std::error::Error + Send + Sync>;

/// Everything an SDK call can fail with. Cheap to clone, so live objects can carry it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request; see [`ServerError::is_transient`].
    #[error("server refused the request: {0}")]
    Server(ServerError),
    /// The connection was down or dropped before the reply; the outcome of a write is unknown.
    #[error("not connected to the server")]
    Disconnected,
    /// The client has been shut down (or dropped).
    #[error("the client has shut down")]
    Closed,
    /// The local store failed.
    #[error("local store: {0}")]
    Store(Arc<redb::Error>),
    /// The local store held a record this version cannot read.
    #[error("local store record is unreadable: {0}")]
    Corrupt(Arc<serde_json::Error>),
    /// A reply did not have the shape of the wire contract.
    #[error("unexpected reply from the server: {0}")]
    Protocol(Arc<serde_json::Error>),
    /// The URL given to the builder cannot be a WebSocket URL.
    #[error("invalid server url: {0}")]
    InvalidUrl(Arc<tokio_tungstenite::tungstenite::Error>),
    /// History that must exist (ordinals have no gaps) did not come back.
    #[error("history from ordinal {from} is missing")]
    MissingHistory { from: u64 },
    /// An update needs the stream's current `messageCount`, which has not loaded yet.
    #[error("the stream has not loaded yet")]
    NotLoaded,
}

impl ClientError {
    /// The server's code, when the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(error) => Some(error.code()),
            _ => None,
        }
    }
}

impl From<redb::Error> for ClientError {
    fn from(error: redb::Error) -> Self {
        ClientError::Store(Arc::new(error))
    }
}

/// redb reports each stage with its own type; all of them are "the store failed".
macro_rules! store_error_from {
    ($($source:ty),*) => {$(
        impl From<$source> for ClientError {
            fn from(error: $source) -> Self {
                ClientError::Store(Arc::new(redb::Error::from(error)))
            }
        }
    )*};
}

store_error_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
