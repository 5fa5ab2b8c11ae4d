//! `/v1/ws`: the WebSocket protocol of DESIGN.md §3.
//!
//! The upgrade is refused (401 JSON) without a valid token, from the `Authorization` header
//! or, for browsers that cannot set it, `?token=`. Each accepted socket becomes a
//! [`session`]; [`frame`] parses requests and renders replies; [`listen`] forwards the events
//! of each listen; [`outbound`] is the bounded queue and the writer.

pub(crate) mod frame;
pub(crate) mod listen;
pub(crate) mod outbound;
pub(crate) mod session;

use std::sync::Arc;

use axum::Extension;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use chorus_api::Caller;
use chorus_types::ApiError;
use serde::Deserialize;

use crate::auth::{AS_USER_HEADER, AuthError, bearer_token};
use crate::error::ErrorReply;
use crate::server::SessionStop;
use crate::state::EdgeState;
use crate::ws::session::SessionSetup;

/// The query parameters `/v1/ws` reads; others are ignored.
#[derive(Deserialize)]
struct WsQuery {
    token: Option<String>,
}

pub(crate) async fn upgrade(
    State(edge): State<Arc<EdgeState>>,
    headers: HeaderMap,
    uri: Uri,
    stop: Option<Extension<SessionStop>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let principal = match authenticate(&edge, &headers, &uri) {
        Ok(principal) => principal,
        Err(error) => return ErrorReply::from(ApiError::from(error)).into_response(),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return ErrorReply::from(ApiError::invalid(rejection.body_text())).into_response();
        }
    };
    let id = edge.next_session_id();
    let setup = SessionSetup {
        id,
        caller: Caller { principal, session: Some(id) },
        service: Arc::clone(&edge.service),
        fanout: Arc::clone(&edge.fanout),
        queue_len: edge.session_queue_len,
        stop: stop.map(|Extension(SessionStop(stop))| stop),
    };
    upgrade
        .max_message_size(edge.max_body_bytes)
        .max_frame_size(edge.max_body_bytes)
        .on_upgrade(move |socket| session::run(socket, setup))
}

fn authenticate(
    edge: &EdgeState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<chorus_api::Principal, AuthError> {
    let header_token = bearer_token(headers)?;
    let query_token = match header_token {
        Some(_) => None,
        None => Query::<WsQuery>::try_from_uri(uri).ok().and_then(|Query(query)| query.token),
    };
    let token = header_token.or(query_token.as_deref());
    let as_user = headers.get(AS_USER_HEADER).map(|value| value.as_bytes());
    edge.auth.authenticate(token, as_user)
}
