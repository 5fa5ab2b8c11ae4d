//! The stream operations HTTP and WebSocket share: one [`Request`] per operation, executed by
//! [`dispatch`] into the exact reply body both transports send (WebSocket `ok` carries what
//! the HTTP response body would).

use axum::http::StatusCode;
use chorus_api::wire::{message_json, message_text, participant_json, stream_json};
use chorus_api::{
    Caller, CreateStream, HistoryQuery, JoinBatch, NewEphemeral, NewPost, ParticipantBody,
    ParticipantOp, ParticipantQuery, Principal, ServiceError, StreamService, UpdateStream,
};
use chorus_types::object_only::ObjectOnly;
use chorus_types::{AccessRow, PublisherId, StreamKey};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::instrument;

/// Every operation a client can name, for metric labels and spans (a closed set).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum OpName {
    Create,
    BatchGet,
    Fetch,
    Update,
    Close,
    Post,
    Messages,
    Join,
    Leave,
    Subscribe,
    Unsubscribe,
    JoinBatch,
    Participants,
    Access,
    SetAccess,
    Ephemeral,
    Listen,
    Unlisten,
    Ping,
    /// A request whose operation could not be told: unknown route, malformed frame.
    Unknown,
}

impl OpName {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OpName::Create => "create",
            OpName::BatchGet => "batch_get",
            OpName::Fetch => "fetch",
            OpName::Update => "update",
            OpName::Close => "close",
            OpName::Post => "post",
            OpName::Messages => "messages",
            OpName::Join => "join",
            OpName::Leave => "leave",
            OpName::Subscribe => "subscribe",
            OpName::Unsubscribe => "unsubscribe",
            OpName::JoinBatch => "join_batch",
            OpName::Participants => "participants",
            OpName::Access => "access",
            OpName::SetAccess => "set_access",
            OpName::Ephemeral => "ephemeral",
            OpName::Listen => "listen",
            OpName::Unlisten => "unlisten",
            OpName::Ping => "ping",
            OpName::Unknown => "unknown",
        }
    }

    pub(crate) fn of_participant_op(op: ParticipantOp) -> Self {
        match op {
            ParticipantOp::Join => OpName::Join,
            ParticipantOp::Leave => OpName::Leave,
            ParticipantOp::Subscribe => OpName::Subscribe,
            ParticipantOp::Unsubscribe => OpName::Unsubscribe,
        }
    }
}

/// `POST /v1/streams/batch-get` body and WebSocket `batchGet` arguments.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchGetBody {
    streams: Vec<ObjectOnly<StreamKey>>,
}

impl BatchGetBody {
    pub(crate) fn keys(self) -> Vec<StreamKey> {
        self.streams.into_iter().map(|ObjectOnly(key)| key).collect()
    }
}

/// `PUT …/access` body and WebSocket `setAccess` arguments.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessRowsBody {
    pub(crate) rows: Vec<AccessRow>,
}

/// A parsed stream operation, transport-independent.
#[derive(Debug)]
pub(crate) enum Request {
    Create(CreateStream),
    BatchGet(Vec<StreamKey>),
    Fetch(StreamKey),
    Update(StreamKey, Box<UpdateStream>),
    Close(StreamKey),
    Post(StreamKey, NewPost),
    Messages(StreamKey, HistoryQuery),
    Participate(StreamKey, ParticipantOp, ParticipantBody),
    JoinBatch(StreamKey, JoinBatch),
    Participants(StreamKey, ParticipantQuery),
    Access(StreamKey),
    SetAccess(StreamKey, Vec<AccessRow>),
    Ephemeral(StreamKey, NewEphemeral),
}

impl Request {
    pub(crate) fn op(&self) -> OpName {
        match self {
            Request::Create(_) => OpName::Create,
            Request::BatchGet(_) => OpName::BatchGet,
            Request::Fetch(_) => OpName::Fetch,
            Request::Update(..) => OpName::Update,
            Request::Close(_) => OpName::Close,
            Request::Post(..) => OpName::Post,
            Request::Messages(..) => OpName::Messages,
            Request::Participate(_, op, _) => OpName::of_participant_op(*op),
            Request::JoinBatch(..) => OpName::JoinBatch,
            Request::Participants(..) => OpName::Participants,
            Request::Access(_) => OpName::Access,
            Request::SetAccess(..) => OpName::SetAccess,
            Request::Ephemeral(..) => OpName::Ephemeral,
        }
    }

    /// The stream this request acts on, for ordering a session's requests: the named stream,
    /// or the one a create names (`None` for a generated name and for `batch-get`).
    pub(crate) fn order_key(&self, caller: &Caller) -> Option<StreamKey> {
        if let Request::Create(req) = self {
            let publisher = match (&caller.principal, &req.publisher_id) {
                (_, Some(p)) => p.clone(),
                (Principal::App, None) => PublisherId::app(),
                (Principal::User { id, .. }, None) => PublisherId::from(id.clone()),
            };
            return req.name.clone().map(|name| StreamKey::new(publisher, name));
        }
        self.stream().cloned()
    }

    /// Whether the owner runs it through the stream's actor (a write), whose queue keeps the
    /// order requests reach it in (see `ws::order`).
    pub(crate) fn queues_at_actor(&self) -> bool {
        match self {
            Request::Create(_)
            | Request::Update(..)
            | Request::Close(_)
            | Request::Post(..)
            | Request::Participate(..)
            | Request::JoinBatch(..)
            | Request::SetAccess(..) => true,
            Request::BatchGet(_)
            | Request::Fetch(_)
            | Request::Messages(..)
            | Request::Participants(..)
            | Request::Access(_)
            | Request::Ephemeral(..) => false,
        }
    }

    fn stream(&self) -> Option<&StreamKey> {
        match self {
            Request::Create(_) | Request::BatchGet(_) => None,
            Request::Fetch(key)
            | Request::Update(key, _)
            | Request::Close(key)
            | Request::Post(key, _)
            | Request::Messages(key, _)
            | Request::Participate(key, ..)
            | Request::JoinBatch(key, _)
            | Request::Participants(key, _)
            | Request::Access(key)
            | Request::SetAccess(key, _)
            | Request::Ephemeral(key, _) => Some(key),
        }
    }
}

/// A successful reply: the HTTP status and the body (also the WebSocket `ok`).
#[derive(Debug, PartialEq)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: ReplyBody,
}

/// A reply body: a JSON value, or JSON text rendered straight from its record (the post path,
/// where building a `Value` first cost an allocation and a copy per field).
#[derive(Debug, PartialEq)]
pub(crate) enum ReplyBody {
    Value(Value),
    Text(String),
}

impl Reply {
    fn ok(body: Value) -> Self {
        Reply { status: StatusCode::OK, body: ReplyBody::Value(body) }
    }
}

/// Runs one operation against the service and renders its reply body.
// Debug level: a span per request at info cost ~12 % of throughput (the fmt layer renders its
// fields at creation); `RUST_LOG=chorus_edge::ops=debug,chorus_node=debug` brings them back.
#[instrument(
    level = "debug",
    skip_all,
    fields(op = request.op().as_str(), stream = tracing::field::Empty)
)]
pub(crate) async fn dispatch(
    service: &dyn StreamService,
    caller: &Caller,
    request: Request,
) -> Result<Reply, ServiceError> {
    if let Some(key) = request.stream() {
        tracing::Span::current().record("stream", tracing::field::display(key));
    }
    let reply = match request {
        Request::Create(req) => {
            let view = service.create(caller, req).await?;
            Reply { status: StatusCode::CREATED, body: ReplyBody::Value(stream_json(&view)) }
        }
        Request::BatchGet(keys) => {
            let views = service.batch_get(caller, keys).await?;
            let streams: Vec<Value> =
                views.iter().map(|view| view.as_ref().map_or(Value::Null, stream_json)).collect();
            Reply::ok(json!({ "streams": streams }))
        }
        Request::Fetch(key) => Reply::ok(stream_json(&service.fetch(caller, &key).await?)),
        Request::Update(key, req) => {
            req.check_read_only(&key)?;
            Reply::ok(stream_json(&service.update(caller, &key, *req).await?))
        }
        Request::Close(key) => Reply::ok(stream_json(&service.close(caller, &key).await?)),
        Request::Post(key, req) => {
            let posted = service.post(caller, &key, req).await?;
            // An idempotent retry returns the original message with 200, a new one 201.
            let status = if posted.duplicate { StatusCode::OK } else { StatusCode::CREATED };
            Reply { status, body: ReplyBody::Text(message_text(&posted.message)) }
        }
        Request::Messages(key, query) => {
            let messages = service.messages(caller, &key, query).await?;
            let rendered: Vec<Value> = messages.iter().map(message_json).collect();
            Reply::ok(json!({ "messages": rendered }))
        }
        Request::Participate(key, op, body) => {
            let participant = service.participate(caller, &key, op, body).await?;
            Reply::ok(participant_json(&participant))
        }
        Request::JoinBatch(key, req) => {
            let batch = service.join_batch(caller, &key, req).await?;
            Reply::ok(json!({
                "joined": batch.joined,
                "participantCount": batch.participant_count,
            }))
        }
        Request::Participants(key, query) => {
            let page = service.participants(caller, &key, query).await?;
            let rendered: Vec<Value> = page.participants.iter().map(participant_json).collect();
            Reply::ok(json!({ "participants": rendered, "next": page.next }))
        }
        Request::Access(key) => {
            let rows = service.access(caller, &key).await?;
            Reply::ok(json!({ "rows": rows }))
        }
        Request::SetAccess(key, rows) => {
            let stored = service.set_access(caller, &key, rows).await?;
            Reply::ok(json!({ "rows": stored }))
        }
        Request::Ephemeral(key, req) => {
            service.ephemeral(caller, &key, req).await?;
            Reply { status: StatusCode::ACCEPTED, body: ReplyBody::Value(json!({})) }
        }
    };
    Ok(reply)
}
