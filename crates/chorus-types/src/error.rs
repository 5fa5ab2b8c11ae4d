//! The closed list of error codes (DESIGN.md §4) and the error object clients see.
//!
//! The list is mirrored in `proto/errors.toml`; a test keeps the two identical so that codes
//! never drift between HTTP, WebSocket and (later) gRPC.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Every error a client can see carries exactly one of these codes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    Unauthenticated,
    Forbidden,
    NotFound,
    AlreadyExists,
    Conflict,
    TooLarge,
    RateLimited,
    NotLeader,
    Unavailable,
    Timeout,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::InvalidArgument,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::NotLeader,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status DESIGN.md §3 assigns to the code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists | ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::NotLeader | ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::Internal => 500,
        }
    }

    /// Failures that say nothing of the operation itself — no leader, the leader changed, no
    /// answer in time — so another attempt (or another copy of the call) may well succeed.
    pub fn is_failover(self) -> bool {
        matches!(self, ErrorCode::Unavailable | ErrorCode::NotLeader | ErrorCode::Timeout)
    }

    /// Codes that invite the caller to try again later; their errors carry `retryAfterMs`.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::RateLimited | ErrorCode::NotLeader | ErrorCode::Unavailable)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error object of the wire contract: `{"code", "message", "retryAfterMs"?}`.
///
/// Every crate's own error type converts into this at the edge; nothing else crosses to a
/// client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// Default back-off hint for retryable errors when the producer gives none.
pub const DEFAULT_RETRY_AFTER_MS: u64 = 200;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let retry_after_ms = code.is_retryable().then_some(DEFAULT_RETRY_AFTER_MS);
        ApiError { code, message: message.into(), retry_after_ms }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "stream not found")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    pub fn with_retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `proto/errors.toml` is the registry; the enum must list the same codes, each once.
    #[test]
    fn registry_matches_enum() {
        let registry = include_str!("../../../proto/errors.toml");
        let mut names: Vec<&str> = registry
            .lines()
            .filter_map(|l| l.trim().strip_prefix("code = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .collect();
        let mut expected: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), expected.len(), "registry and enum differ in size");
        names.sort_unstable();
        expected.sort_unstable();
        let mut dedup = names.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), names.len(), "duplicate code in proto/errors.toml");
        assert_eq!(names, expected);
        for line in registry.lines().filter_map(|l| l.trim().strip_prefix("http = ")) {
            let status: u16 = line.parse().unwrap_or(0);
            assert!(ErrorCode::ALL.iter().any(|c| c.http_status() == status), "{status}");
        }
    }

    #[test]
    fn serde_names_are_the_wire_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
