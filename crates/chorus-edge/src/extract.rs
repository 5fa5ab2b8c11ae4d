//! Extractors whose every rejection is an [`ErrorReply`] in the contract's JSON shape, never
//! axum's plain-text rejections: the caller, the stream of the path, a JSON body, a query.
//!
//! Handlers take them as `Result<Extractor, ErrorReply>` so that a rejection is still counted
//! under the handler's operation.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use chorus_api::Caller;
use chorus_types::{ApiError, PublisherId, StreamKey, StreamName};
use serde::de::DeserializeOwned;

use crate::auth::{as_user_header, bearer_token};
use crate::error::ErrorReply;
use crate::state::EdgeState;

/// The authenticated caller of an HTTP request.
pub(crate) struct Authenticated(pub(crate) Caller);

impl FromRequestParts<Arc<EdgeState>> for Authenticated {
    type Rejection = ErrorReply;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<EdgeState>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers).map_err(ApiError::from)?;
        let as_user = as_user_header(&parts.headers).map_err(ApiError::from)?;
        let principal = state.auth.authenticate(token, as_user).map_err(ApiError::from)?;
        Ok(Authenticated(Caller::new(principal, None)))
    }
}

/// The stream named by `/{publisherId}/{name}` (percent-decoded; `~` is the publisher `""`).
pub(crate) struct StreamPath(pub(crate) StreamKey);

impl<S: Send + Sync> FromRequestParts<S> for StreamPath {
    type Rejection = ErrorReply;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((publisher, name)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
        Ok(StreamPath(stream_key_from_path(&publisher, &name)?))
    }
}

pub(crate) fn stream_key_from_path(publisher: &str, name: &str) -> Result<StreamKey, ApiError> {
    // A URL cannot carry an empty path segment, so the app-wide publisher is spelled `~`; an
    // empty one (`/v1/streams//x`) is most likely a client's unset variable, so it is refused
    // rather than read as the app.
    if publisher.is_empty() {
        return Err(ApiError::invalid(
            "the publisher path segment is empty (the app's publisher is spelled ~)",
        ));
    }
    let publisher_id =
        if publisher == "~" { PublisherId::app() } else { PublisherId::new(publisher)? };
    Ok(StreamKey::new(publisher_id, StreamName::new(name)?))
}

/// A required JSON body, deserialized strictly into `T`.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ErrorReply;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(request, state).await?;
        if is_blank(&bytes) {
            return Err(ApiError::invalid("a JSON request body is required").into());
        }
        Ok(JsonBody(parse_json(&bytes)?))
    }
}

/// An optional JSON body: an empty body means `T::default()` (join, leave, … take `{}`,
/// `{"extra": …}` or nothing).
pub(crate) struct OptionalJsonBody<T>(pub(crate) T);

impl<S, T> FromRequest<S> for OptionalJsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ErrorReply;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(request, state).await?;
        if is_blank(&bytes) {
            return Ok(OptionalJsonBody(T::default()));
        }
        Ok(OptionalJsonBody(parse_json(&bytes)?))
    }
}

/// Buffers the body within the router's `DefaultBodyLimit`.
///
/// Every body is parsed as JSON whatever its `Content-Type` says: `curl -d` sends
/// `application/x-www-form-urlencoded`, and refusing a valid JSON body over a header helps
/// nobody. A body that is not JSON still fails, naming the problem.
///
/// A body must arrive within [`body_deadline`] of its headers: without a limit a client that
/// sends headers and then a byte now and then (slowloris through the body) holds the
/// connection for good. hyper closes a connection whose body was not read to the end, so the
/// 400 is the last thing on it.
async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ErrorReply> {
    // A declared length over the limit is refused before the body is touched: reading it would
    // make hyper send `100 Continue` to a client that asked (`Expect: 100-continue`), which
    // then uploads a body only to be told 413 (RFC 9110 §10.1.1).
    if let Some(BodyLimit(max)) = request.extensions().get::<BodyLimit>()
        && declared_length(request.headers()).is_some_and(|n| n > *max as u64)
    {
        return Err(ApiError::too_large("request body is larger than the limit").into());
    }
    let deadline = body_deadline(request.headers());
    match tokio::time::timeout(deadline, Bytes::from_request(request, state)).await {
        Ok(read) => read.map_err(body_rejection),
        Err(_) => Err(ApiError::invalid(format!(
            "the request body did not arrive within {} s",
            deadline.as_secs()
        ))
        .into()),
    }
}

/// The router's body limit in bytes, for refusing a declared length up front.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyLimit(pub(crate) usize);

fn declared_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers.get(axum::http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// 20 s (the header-read timeout, docs/timeouts.md) plus a second per 16 KiB the body declares,
/// so a slow but moving client can still send a large body (1 MiB: 84 s). A body without a
/// length (chunked) is given the time of 1 MiB.
fn body_deadline(headers: &axum::http::HeaderMap) -> Duration {
    const BASE: Duration = Duration::from_secs(20);
    const BYTES_PER_SECOND: u64 = 16 * 1024;
    const UNKNOWN_LENGTH: u64 = 1024 * 1024;
    // Bodies beyond the limit are refused on their length before this matters.
    const LONGEST: u64 = 64 * 1024 * 1024;
    let length = declared_length(headers).unwrap_or(UNKNOWN_LENGTH).min(LONGEST);
    BASE + Duration::from_secs(length / BYTES_PER_SECOND)
}

fn body_rejection(rejection: BytesRejection) -> ErrorReply {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::too_large("request body is larger than the limit").into();
    }
    ApiError::invalid(rejection.body_text()).into()
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// Deserializes JSON strictly; the error names the offending field's path.
///
/// Every request body is a JSON object: serde would also read a struct from an array, by field
/// position, which would make field order part of the API.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace())
        && *first == b'['
    {
        return Err(ApiError::invalid("the request body must be a JSON object, not an array"));
    }
    let value = Json::<T>::from_bytes(bytes).map(|Json(value)| value).map_err(json_rejection)?;
    // Struct fields refuse duplicates themselves; this covers the free-form values inside
    // (`attributes`, `instructions`, `extra`, `payload`), as a WebSocket frame does.
    crate::ws::strict_json::check_unique_keys(bytes)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(value)
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    // The source is serde's error prefixed with the field path ("rows[0].readLevel: …"),
    // without axum's generic "Failed to deserialize …" sentence.
    let detail = std::error::Error::source(&rejection)
        .map(ToString::to_string)
        .unwrap_or_else(|| rejection.body_text());
    let message = match rejection {
        JsonRejection::JsonSyntaxError(_) => format!("malformed JSON: {detail}"),
        _ => detail,
    };
    ApiError::invalid(message)
}

/// A query string deserialized strictly into `T`.
pub(crate) struct QueryArgs<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for QueryArgs<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ErrorReply;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // `?min=&limit=5` (the route templates' own spelling) means min is absent, and so does
        // a bare `?min` (an empty value, as URL parsers read it).
        let filtered: Vec<&str> = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| pair.contains('=') && !pair.ends_with('='))
            .collect();
        let uri: axum::http::Uri = format!("/?{}", filtered.join("&"))
            .parse()
            .map_err(|_| ApiError::invalid("query string is malformed"))?;
        let Query(value) = Query::<T>::try_from_uri(&uri).map_err(|rejection| {
            let detail = std::error::Error::source(&rejection)
                .map(ToString::to_string)
                .unwrap_or_else(|| rejection.body_text());
            ApiError::invalid(format!("query string: {detail}"))
        })?;
        Ok(QueryArgs(value))
    }
}

#[cfg(test)]
mod tests {
    use chorus_api::{CreateStream, HistoryQuery, ParticipantBody};
    use chorus_types::ErrorCode;

    use super::*;

    #[test]
    fn json_errors_name_the_field() {
        let unknown = parse_json::<CreateStream>(br#"{"type":"Chat/room","bogus":1}"#).unwrap_err();
        assert_eq!(unknown.code, ErrorCode::InvalidArgument);
        assert!(unknown.message.contains("bogus"), "{}", unknown.message);
        let wrong_type =
            parse_json::<CreateStream>(br#"{"type":"Chat/room","readLevel":"x"}"#).unwrap_err();
        assert!(wrong_type.message.contains("readLevel"), "{}", wrong_type.message);
        let array = parse_json::<CreateStream>(br#"["a","x","T"]"#).unwrap_err();
        assert!(array.message.contains("JSON object"), "{}", array.message);
        let syntax = parse_json::<CreateStream>(b"{").unwrap_err();
        assert!(syntax.message.starts_with("malformed JSON"), "{}", syntax.message);
    }

    #[test]
    fn path_publisher_tilde_is_the_app() {
        let key = stream_key_from_path("~", "Chat/room/").unwrap();
        assert!(key.publisher_id.is_app());
        assert_eq!(key.name.as_str(), "Chat/room/");
        assert!(stream_key_from_path("bad publisher", "x").is_err());
        assert!(stream_key_from_path("", "x").is_err());
    }

    #[test]
    fn query_strictness() {
        let uri = "/x?min=2&order=desc".parse().unwrap();
        let Query(query) = Query::<HistoryQuery>::try_from_uri(&uri).unwrap();
        assert_eq!(query.min, Some(2));
        let bad: axum::http::Uri = "/x?bogus=1".parse().unwrap();
        assert!(Query::<HistoryQuery>::try_from_uri(&bad).is_err());
    }

    #[tokio::test]
    async fn empty_and_bare_query_values_are_absent() {
        let args = |uri: &str| {
            let (mut parts, ()) =
                axum::http::Request::builder().uri(uri).body(()).unwrap().into_parts();
            async move { QueryArgs::<HistoryQuery>::from_request_parts(&mut parts, &()).await }
        };
        let QueryArgs(q) = args("/x?min=&limit&max=9").await.unwrap();
        assert_eq!((q.min, q.limit, q.max), (None, None, Some(9)));
        assert!(args("/x?limit=abc").await.is_err());
        assert!(args("/x?bogus=1").await.is_err());
    }

    #[test]
    fn slower_bodies_get_longer_by_their_length() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(body_deadline(&headers), Duration::from_secs(84), "no length: as 1 MiB");
        headers.insert(axum::http::header::CONTENT_LENGTH, "100".parse().unwrap());
        assert_eq!(body_deadline(&headers), Duration::from_secs(20));
        headers.insert(axum::http::header::CONTENT_LENGTH, "1048576".parse().unwrap());
        assert_eq!(body_deadline(&headers), Duration::from_secs(84));
    }

    #[test]
    fn blank_bodies() {
        assert!(is_blank(b" \n"));
        assert!(!is_blank(b"{}"));
        assert!(parse_json::<ParticipantBody>(br#"{"extra":{"a":1}}"#).is_ok());
    }
}
