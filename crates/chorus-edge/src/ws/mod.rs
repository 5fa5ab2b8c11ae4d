//! `/v1/ws`: the WebSocket protocol of DESIGN.md §3.
//!
//! The upgrade is refused (401 JSON) without a valid token, from the `Authorization` header
//! or, for browsers that cannot set it, `?token=`. Each accepted socket becomes a
//! [`session`]; [`frame`] parses requests and renders replies; [`listen`] forwards the events
//! of each listen; [`outbound`] is the bounded queue and the writer. The upgrade itself is
//! done by `handshake` (so a session owns its TCP socket), frames are encoded by [`wire`] and
//! read by tungstenite through `client_io`.

mod client_io;
mod fast_post;
pub(crate) mod frame;
mod frame_id;
mod handshake;
pub(crate) mod listen;
mod order;
pub(crate) mod outbound;
pub(crate) mod session;
pub(crate) mod strict_json;
pub(crate) mod wire;

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use chorus_api::Caller;
use chorus_types::ApiError;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::{AuthError, as_user_header, bearer_token};
use crate::error::ErrorReply;
use crate::server::{ConnectionSlot, SessionStop};
use crate::state::EdgeState;
use crate::ws::session::SessionSetup;

/// Initial read buffer of a session. tungstenite's default, 128 KiB allocated up front, would
/// make an idle session cost more than ten times its target (≤ 10 KiB); client frames are
/// small, and a larger one grows the buffer as it arrives.
const READ_BUFFER: usize = 1024;

/// The query parameters `/v1/ws` takes: only `token`. Any other is refused (400) after
/// authentication, as on every route without query parameters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WsQuery {
    #[serde(rename = "token")]
    _token: Option<serde::de::IgnoredAny>,
}

/// The token from the query, read leniently so that a bad token is a 401 whatever else the
/// query holds.
#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

pub(crate) async fn upgrade(
    State(edge): State<Arc<EdgeState>>,
    stop: Option<Extension<SessionStop>>,
    slot: Option<Extension<ConnectionSlot>>,
    mut request: Request,
) -> Response {
    let (principal, expires) = match authenticate(&edge, request.headers(), request.uri()) {
        Ok(authenticated) => authenticated,
        Err(error) => return ErrorReply::from(ApiError::from(error)).into_response(),
    };
    if let Err(rejection) = Query::<WsQuery>::try_from_uri(request.uri()) {
        let message =
            format!("/v1/ws takes only the query parameter `token`: {}", rejection.body_text());
        return ErrorReply::from(ApiError::invalid(message)).into_response();
    }
    let accepted = match handshake::accept(&mut request) {
        Ok(accepted) => accepted,
        Err(refused) => return refused.into_response(),
    };
    let id = edge.next_session_id();
    let setup = SessionSetup {
        id,
        caller: Caller::new(principal, Some(id)),
        service: Arc::clone(&edge.service),
        fanout: Arc::clone(&edge.fanout),
        queue_len: edge.session_queue_len,
        stop: stop.map(|Extension(SessionStop(stop))| stop),
        expires,
        config: WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(edge.max_body_bytes))
            .max_frame_size(Some(edge.max_body_bytes)),
    };
    tokio::spawn(async move {
        // The session counts against the edge's connection limit until it ends.
        let _slot = slot;
        match handshake::socket(accepted.on_upgrade).await {
            Ok((socket, prefix)) => session::run(socket, prefix, setup).await,
            Err(error) => tracing::warn!(%error, "websocket upgrade failed"),
        }
    });
    accepted.response
}

fn authenticate(
    edge: &EdgeState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(chorus_api::Principal, Option<std::time::SystemTime>), AuthError> {
    let header_token = bearer_token(headers)?;
    let tokens_in_query = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| pair.split('=').next() == Some("token"))
        .count();
    // With both the header and one `?token=`, the header is used (docs/protocol.md).
    if tokens_in_query > 1 {
        return Err(AuthError::DuplicateAuthorization);
    }
    let query_token = match header_token {
        Some(_) => None,
        None => Query::<TokenQuery>::try_from_uri(uri).ok().and_then(|Query(query)| query.token),
    };
    let token = header_token.or(query_token.as_deref());
    let as_user = as_user_header(headers)?;
    edge.auth.authenticate_until(token, as_user)
}
