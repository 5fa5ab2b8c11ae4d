//! The HTTP/1.1 upgrade to WebSocket (RFC 6455 §4.2), done here rather than by axum's
//! extractor so that a session owns its raw TCP socket: events are then written straight
//! from the fan-out with a non-blocking write (see [`super::outbound`]) instead of through
//! a per-session WebSocket sink.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chorus_types::ApiError;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A valid upgrade request: the `101` to answer with, and the connection to come.
pub(crate) struct Accepted {
    pub(crate) response: Response,
    pub(crate) on_upgrade: OnUpgrade,
}

/// Checks an upgrade request as axum's `WebSocketUpgrade` does, with the same messages.
pub(crate) fn accept(request: &mut Request) -> Result<Accepted, Refused> {
    if request.version() != Version::HTTP_11 {
        return Err(ApiError::invalid("WebSocket upgrades need HTTP/1.1").into());
    }
    if request.method() != Method::GET {
        return Err(ApiError::invalid("Request method must be `GET`").into());
    }
    let headers = request.headers();
    if !header_contains(headers, &header::CONNECTION, "upgrade") {
        return Err(ApiError::invalid("Connection header did not include 'upgrade'").into());
    }
    if !header_eq(headers, &header::UPGRADE, "websocket") {
        return Err(ApiError::invalid("`Upgrade` header did not include 'websocket'").into());
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ApiError::invalid("`Sec-WebSocket-Key` header missing"))?;
    // 16 random bytes in base64 (RFC 6455 §4.1).
    if key.len() != 24 {
        return Err(
            ApiError::invalid("`Sec-WebSocket-Key` header is not 16 bytes in base64").into()
        );
    }
    if !header_eq(headers, &header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(Refused::Version);
    }
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| ApiError::invalid("`Sec-WebSocket-Key` header is not valid"))?;
    let on_upgrade = request.extensions_mut().remove::<OnUpgrade>().ok_or_else(|| {
        ApiError::invalid(
            "WebSocket request couldn't be upgraded since no upgrade state was present",
        )
    })?;
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let out = response.headers_mut();
    out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    out.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    Ok(Accepted { response, on_upgrade })
}

/// Why an upgrade request is refused.
pub(crate) enum Refused {
    /// Malformed: 400 `invalid_argument`.
    Invalid(ApiError),
    /// A WebSocket version other than 13: `426 Upgrade Required` naming the version spoken
    /// (RFC 6455 §4.4), so a client can retry with it; the body is the contract's error.
    Version,
}

impl From<ApiError> for Refused {
    fn from(error: ApiError) -> Self {
        Refused::Invalid(error)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Invalid(error) => crate::error::ErrorReply::from(error).into_response(),
            Refused::Version => {
                let error =
                    ApiError::invalid("`Sec-WebSocket-Version` header did not include '13'");
                let mut response = crate::error::ErrorReply::from(error).into_response();
                *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
                response
                    .headers_mut()
                    .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
                response
            }
        }
    }
}

/// Why an accepted upgrade yielded no socket.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    #[error("the upgrade did not complete: {0}")]
    Hyper(#[from] hyper::Error),
    #[error("the upgraded connection is not a TCP socket")]
    NotTcp,
}

/// The TCP socket of a completed upgrade, and any bytes the client sent past the request.
pub(crate) async fn socket(on_upgrade: OnUpgrade) -> Result<(TcpStream, Bytes), UpgradeError> {
    let upgraded = on_upgrade.await?;
    // `axum::serve` detects the HTTP version first, which wraps the socket; a plain HTTP/1
    // connection does not.
    match hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<TcpStream>>(upgraded) {
        Ok(parts) => Ok((parts.io.into_inner(), parts.read_buf)),
        Err(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => Ok((parts.io.into_inner(), parts.read_buf)),
            Err(_) => Err(UpgradeError::NotTcp),
        },
    }
}

fn header_eq(headers: &HeaderMap, key: &HeaderName, value: &str) -> bool {
    headers.get(key).is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

fn header_contains(headers: &HeaderMap, key: &HeaderName, value: &str) -> bool {
    headers.get_all(key).iter().any(|h| {
        h.to_str().is_ok_and(|s| s.split(',').any(|part| part.trim().eq_ignore_ascii_case(value)))
    })
}
