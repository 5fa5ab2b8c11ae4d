//! Rendering failures in the one error shape of DESIGN.md §3:
//! `{"error": {"code", "message", "retryAfterMs"?}}`, plus `"stream"` beside it when a
//! precondition failed. HTTP gets the code's status and, for retryable codes, `Retry-After`.

use axum::Json;
use axum::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chorus_api::ServiceError;
use chorus_api::wire::stream_json;
use chorus_types::error::DEFAULT_RETRY_AFTER_MS;
use chorus_types::{ApiError, ErrorCode};
use serde_json::{Map, Value, json};

/// A failure on its way to a client; every rejection of this crate's extractors is one.
#[derive(Debug)]
pub(crate) struct ErrorReply(pub(crate) ServiceError);

impl ErrorReply {
    pub(crate) fn code(&self) -> ErrorCode {
        self.0.error.code
    }

    /// Renders with a status other than the code's own (405 for a wrong method, 503 for
    /// `/readyz`).
    pub(crate) fn into_response_with_status(self, status: StatusCode) -> Response {
        let error = normalized(&self.0.error);
        let mut response = (status, Json(error_json(&self.0))).into_response();
        if let Some(ms) = error.retry_after_ms.filter(|_| error.code.is_retryable()) {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(ms)));
        }
        // RFC 6750 §3: a 401 names the scheme it wants.
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<ApiError> for ErrorReply {
    fn from(error: ApiError) -> Self {
        ErrorReply(ServiceError::from(error))
    }
}

impl From<ServiceError> for ErrorReply {
    fn from(error: ServiceError) -> Self {
        ErrorReply(error)
    }
}

impl IntoResponse for ErrorReply {
    fn into_response(self) -> Response {
        let status = http_status(self.0.error.code);
        self.into_response_with_status(status)
    }
}

pub(crate) fn http_status(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Retryable errors always carry a back-off hint, even when their producer gave none.
fn normalized(error: &ApiError) -> ApiError {
    let mut error = error.clone();
    if error.code.is_retryable() && error.retry_after_ms.is_none() {
        error.retry_after_ms = Some(DEFAULT_RETRY_AFTER_MS);
    }
    error
}

/// `{"error": {…}}`, with `"stream"` beside it when the service sent the current stream.
pub(crate) fn error_json(error: &ServiceError) -> Value {
    let mut object = Map::new();
    object.insert("error".into(), json!(normalized(&error.error)));
    if let Some(view) = &error.stream {
        object.insert("stream".into(), stream_json(view));
    }
    Value::Object(object)
}

/// `Retry-After` is in whole seconds: rounded up, and at least 1 so clients never spin.
pub(crate) fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use chorus_api::StreamView;
    use chorus_types::{Millis, PublisherId, StreamName, StreamRecord, StreamType};

    use super::*;

    async fn render(reply: ErrorReply) -> (StatusCode, Option<String>, Value) {
        let response = reply.into_response();
        let status = response.status();
        let retry_after =
            response.headers().get(RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, retry_after, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn plain_error_has_its_status_and_no_retry_after() {
        let (status, retry_after, body) = render(ApiError::not_found().into()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(retry_after, None);
        assert_eq!(body, json!({"error": {"code": "not_found", "message": "stream not found"}}));
    }

    #[tokio::test]
    async fn retryable_error_sets_retry_after_rounded_up() {
        let error = ApiError::new(ErrorCode::RateLimited, "slow down").with_retry_after(1500);
        let (status, retry_after, body) = render(error.into()).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(retry_after.as_deref(), Some("2"));
        assert_eq!(body["error"]["retryAfterMs"], 1500);
        assert_eq!(body["error"]["code"], "rate_limited");
    }

    #[tokio::test]
    async fn retryable_error_without_hint_gets_the_default() {
        let mut error = ApiError::new(ErrorCode::NotLeader, "moved");
        error.retry_after_ms = None;
        let (status, retry_after, body) = render(error.into()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(body["error"]["retryAfterMs"], DEFAULT_RETRY_AFTER_MS);
    }

    #[tokio::test]
    async fn every_code_maps_to_its_status() {
        for code in ErrorCode::ALL {
            let (status, retry_after, body) = render(ApiError::new(code, "x").into()).await;
            assert_eq!(status.as_u16(), code.http_status());
            assert_eq!(retry_after.is_some(), code.is_retryable(), "{code}");
            assert_eq!(body["error"]["code"], code.as_str());
        }
    }

    #[tokio::test]
    async fn conflict_carries_the_stream() {
        let record = StreamRecord {
            publisher_id: PublisherId::new("alice").unwrap(),
            name: StreamName::new("Chat/room/1").unwrap(),
            stream_type: StreamType::new("Chat/room").unwrap(),
            title: "t".into(),
            icon: String::new(),
            content: String::new(),
            attributes: json!({}),
            read_level: 0,
            write_level: 0,
            admin_level: 0,
            inherit_access: Vec::new(),
            message_count: 7,
            participant_count: 0,
            inserted_time: Millis(0),
            updated_time: Millis(0),
            closed_time: None,
        };
        let error = ServiceError {
            error: ApiError::conflict("messageCount differs"),
            stream: Some(Box::new(StreamView { record, read_level: 40 })),
        };
        let (status, _, body) = render(error.into()).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body["error"]["code"], "conflict");
        assert_eq!(body["stream"]["messageCount"], 7);
        assert_eq!(body["stream"]["name"], "Chat/room/1");
    }

    #[test]
    fn retry_after_rounding() {
        assert_eq!(retry_after_secs(0), 1);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1000), 1);
        assert_eq!(retry_after_secs(1001), 2);
    }
}
