//! The `/v1` HTTP routes of DESIGN.md §3. Each handler only parses into a [`Request`] and
//! hands it to [`respond`]; the work is in [`dispatch`], shared with the WebSocket.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chorus_api::{
    CreateStream, HistoryQuery, JoinBatch, NewEphemeral, NewPost, ParticipantBody, ParticipantOp,
    ParticipantQuery, UpdateStream,
};
use chorus_types::{ApiError, ErrorCode};

use crate::error::ErrorReply;
use crate::extract::{Authenticated, JsonBody, OptionalJsonBody, QueryArgs, StreamPath};
use crate::metrics::{Transport, record_request, record_timed_request};
use crate::ops::{AccessRowsBody, BatchGetBody, OpName, ReplyBody, Request, dispatch};
use crate::state::EdgeState;

type Edge = State<Arc<EdgeState>>;
type Auth = Result<Authenticated, ErrorReply>;
type Key = Result<StreamPath, ErrorReply>;
type Body<T> = Result<JsonBody<T>, ErrorReply>;
type MaybeBody<T> = Result<OptionalJsonBody<T>, ErrorReply>;
type QueryOf<T> = Result<QueryArgs<T>, ErrorReply>;

pub(crate) fn routes() -> Router<Arc<EdgeState>> {
    const STREAM: &str = "/v1/streams/{publisher_id}/{name}";
    Router::new()
        .route("/v1/streams", post(create))
        .route("/v1/streams/batch-get", post(batch_get))
        .route(STREAM, get(fetch).patch(update).delete(close))
        .route(&format!("{STREAM}/messages"), post(post_message).get(messages))
        .route(&format!("{STREAM}/join"), post(join))
        .route(&format!("{STREAM}/leave"), post(leave))
        .route(&format!("{STREAM}/subscribe"), post(subscribe))
        .route(&format!("{STREAM}/unsubscribe"), post(unsubscribe))
        .route(&format!("{STREAM}/participants"), get(participants))
        .route(&format!("{STREAM}/participants/batch"), post(join_batch))
        .route(&format!("{STREAM}/access"), get(access).put(set_access))
        .route(&format!("{STREAM}/ephemeral"), post(ephemeral))
        .route_layer(axum::middleware::from_fn(crate::strict::refuse_stray_input))
}

/// Authenticates, runs the request and renders the reply or the error; counts the outcome.
async fn respond(
    edge: &EdgeState,
    op: OpName,
    caller: Auth,
    request: Result<Request, ErrorReply>,
) -> Response {
    let started = std::time::Instant::now();
    // Authentication is checked first: an anonymous caller learns nothing about its request.
    let outcome = match (caller, request) {
        (Err(error), _) | (Ok(_), Err(error)) => Err(error),
        (Ok(Authenticated(caller)), Ok(request)) => {
            dispatch(edge.service.as_ref(), &caller, request).await.map_err(ErrorReply::from)
        }
    };
    record_timed_request(
        Transport::Http,
        op,
        outcome.as_ref().err().map(ErrorReply::code),
        started,
    );
    match outcome {
        Ok(reply) => match reply.body {
            ReplyBody::Value(body) => (reply.status, Json(body)).into_response(),
            ReplyBody::Text(text) => {
                let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
                (reply.status, json, text).into_response()
            }
        },
        Err(error) => error.into_response(),
    }
}

async fn create(State(edge): Edge, caller: Auth, body: Body<CreateStream>) -> Response {
    let request = body.map(|JsonBody(req)| Request::Create(req));
    respond(&edge, OpName::Create, caller, request).await
}

async fn batch_get(State(edge): Edge, caller: Auth, body: Body<BatchGetBody>) -> Response {
    let request = body.map(|JsonBody(req)| Request::BatchGet(req.keys()));
    respond(&edge, OpName::BatchGet, caller, request).await
}

async fn fetch(State(edge): Edge, caller: Auth, key: Key) -> Response {
    let request = key.map(|StreamPath(key)| Request::Fetch(key));
    respond(&edge, OpName::Fetch, caller, request).await
}

async fn update(State(edge): Edge, caller: Auth, key: Key, body: Body<UpdateStream>) -> Response {
    let request = key
        .and_then(|StreamPath(key)| body.map(|JsonBody(req)| Request::Update(key, Box::new(req))));
    respond(&edge, OpName::Update, caller, request).await
}

async fn close(State(edge): Edge, caller: Auth, key: Key) -> Response {
    let request = key.map(|StreamPath(key)| Request::Close(key));
    respond(&edge, OpName::Close, caller, request).await
}

async fn post_message(State(edge): Edge, caller: Auth, key: Key, body: Body<NewPost>) -> Response {
    let request = key.and_then(|StreamPath(key)| body.map(|JsonBody(req)| Request::Post(key, req)));
    respond(&edge, OpName::Post, caller, request).await
}

async fn messages(
    State(edge): Edge,
    caller: Auth,
    key: Key,
    query: QueryOf<HistoryQuery>,
) -> Response {
    let request =
        key.and_then(|StreamPath(key)| query.map(|QueryArgs(q)| Request::Messages(key, q)));
    respond(&edge, OpName::Messages, caller, request).await
}

async fn participate(
    edge: &EdgeState,
    op: ParticipantOp,
    caller: Auth,
    key: Key,
    body: MaybeBody<ParticipantBody>,
) -> Response {
    let request = key.and_then(|StreamPath(key)| {
        body.map(|OptionalJsonBody(req)| Request::Participate(key, op, req))
    });
    respond(edge, OpName::of_participant_op(op), caller, request).await
}

async fn join(
    State(edge): Edge,
    caller: Auth,
    key: Key,
    body: MaybeBody<ParticipantBody>,
) -> Response {
    participate(&edge, ParticipantOp::Join, caller, key, body).await
}

async fn leave(
    State(edge): Edge,
    caller: Auth,
    key: Key,
    body: MaybeBody<ParticipantBody>,
) -> Response {
    participate(&edge, ParticipantOp::Leave, caller, key, body).await
}

async fn subscribe(
    State(edge): Edge,
    caller: Auth,
    key: Key,
    body: MaybeBody<ParticipantBody>,
) -> Response {
    participate(&edge, ParticipantOp::Subscribe, caller, key, body).await
}

async fn unsubscribe(
    State(edge): Edge,
    caller: Auth,
    key: Key,
    body: MaybeBody<ParticipantBody>,
) -> Response {
    participate(&edge, ParticipantOp::Unsubscribe, caller, key, body).await
}

/// The app joins many users at once: `{"join": [userId, …]}` → `{"joined", "participantCount"}`.
async fn join_batch(State(edge): Edge, caller: Auth, key: Key, body: Body<JoinBatch>) -> Response {
    let request =
        key.and_then(|StreamPath(key)| body.map(|JsonBody(req)| Request::JoinBatch(key, req)));
    respond(&edge, OpName::JoinBatch, caller, request).await
}

async fn participants(
    State(edge): Edge,
    caller: Auth,
    key: Key,
    query: QueryOf<ParticipantQuery>,
) -> Response {
    let request =
        key.and_then(|StreamPath(key)| query.map(|QueryArgs(q)| Request::Participants(key, q)));
    respond(&edge, OpName::Participants, caller, request).await
}

async fn access(State(edge): Edge, caller: Auth, key: Key) -> Response {
    let request = key.map(|StreamPath(key)| Request::Access(key));
    respond(&edge, OpName::Access, caller, request).await
}

async fn set_access(
    State(edge): Edge,
    caller: Auth,
    key: Key,
    body: Body<AccessRowsBody>,
) -> Response {
    let request =
        key.and_then(|StreamPath(key)| body.map(|JsonBody(req)| Request::SetAccess(key, req.rows)));
    respond(&edge, OpName::SetAccess, caller, request).await
}

async fn ephemeral(
    State(edge): Edge,
    caller: Auth,
    key: Key,
    body: Body<NewEphemeral>,
) -> Response {
    let request =
        key.and_then(|StreamPath(key)| body.map(|JsonBody(req)| Request::Ephemeral(key, req)));
    respond(&edge, OpName::Ephemeral, caller, request).await
}

/// Any path no route matches.
pub(crate) async fn not_found() -> Response {
    record_request(Transport::Http, OpName::Unknown, Some(ErrorCode::NotFound));
    ErrorReply::from(ApiError::new(ErrorCode::NotFound, "no such route")).into_response()
}

/// A known path with a method it does not take: 405, in the contract's error shape.
pub(crate) async fn method_not_allowed() -> Response {
    record_request(Transport::Http, OpName::Unknown, Some(ErrorCode::InvalidArgument));
    ErrorReply::from(ApiError::invalid("method not allowed on this route"))
        .into_response_with_status(StatusCode::METHOD_NOT_ALLOWED)
}
