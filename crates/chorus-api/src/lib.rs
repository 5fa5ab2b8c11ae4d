//! The owner service as the edge sees it: one trait, [`StreamService`], with every operation a
//! client can ask of a stream, and the request and reply types those operations carry.
//!
//! The edge (`chorus-edge`) parses HTTP and WebSocket requests into these types and calls the
//! trait; it never knows where a stream lives. `chorus-node` implements the trait over its
//! local shards (dev mode, and the owner side of a cluster); a gRPC client will implement the
//! same trait for edges that run apart from the nodes. Request types deny unknown fields, so
//! the strictness of the wire contract (DESIGN.md §3) is enforced in one place.

use std::pin::Pin;
use std::sync::Arc;

pub mod order;
pub mod wire;

use chorus_types::{
    AccessRow, ApiError, ClientMsgId, InheritEntry, MessageRecord, ParticipantRecord,
    ParticipantState, PublisherId, StreamKey, StreamName, StreamRecord, StreamType, UserId,
};
use futures_core::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Bits of a session id that identify a session cluster-wide. Edges number their sessions
/// below 2^39; a node forwarding a call puts its own id above these bits. Ephemerals carry
/// their sender's id so that the sender does not get its own back.
pub const SESSION_ID_BITS: u32 = 40;

/// Whether two session ids, as they travel, name the same session.
pub fn same_session(a: u64, b: u64) -> bool {
    (a ^ b) & ((1 << SESSION_ID_BITS) - 1) == 0
}

/// Who is asking. Resolved by the edge from a JWT or the app's API key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// The app's API key without `X-Chorus-As-User`: max levels everywhere.
    App,
    /// A user, with the roles from their token (or none when the app acts as them).
    User { id: UserId, roles: Vec<String> },
}

/// The caller of one operation.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    /// The WebSocket session the request came from, so ephemerals skip their sender.
    pub session: Option<u64>,
    /// Where the edge orders this request behind the session's earlier ones on its stream:
    /// the owner may let the next one start before this one is done ([`order`]).
    pub order: order::OrderRelease,
}

impl Caller {
    /// The app itself, outside any session: what an edge uses for the one listen per stream it
    /// shares among its sessions (each session is authorised on its own first).
    pub fn app() -> Caller {
        Caller::new(Principal::App, None)
    }

    pub fn new(principal: Principal, session: Option<u64>) -> Caller {
        Caller { principal, session, order: order::OrderRelease::default() }
    }

    pub fn user_id(&self) -> Option<&UserId> {
        match &self.principal {
            Principal::App => None,
            Principal::User { id, .. } => Some(id),
        }
    }

    /// `byUserId` of what this caller posts: the user id, or `""` for the app.
    pub fn by_user_id(&self) -> String {
        self.user_id().map(|u| u.as_str().to_owned()).unwrap_or_default()
    }
}

/// `POST /v1/streams`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateStream {
    /// Defaults to the caller.
    pub publisher_id: Option<PublisherId>,
    /// Generated as `<type>/<ulid>` when absent.
    pub name: Option<StreamName>,
    #[serde(rename = "type")]
    pub stream_type: StreamType,
    pub title: Option<String>,
    pub icon: Option<String>,
    pub content: Option<String>,
    pub attributes: Option<Value>,
    pub read_level: Option<i32>,
    pub write_level: Option<i32>,
    pub admin_level: Option<i32>,
    pub inherit_access: Option<Vec<InheritEntry>>,
}

/// `PATCH /v1/streams/{p}/{name}`: the fields to change, and an optional precondition.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateStream {
    pub title: Option<String>,
    pub icon: Option<String>,
    pub content: Option<String>,
    pub attributes: Option<Value>,
    pub read_level: Option<i32>,
    pub write_level: Option<i32>,
    pub admin_level: Option<i32>,
    pub inherit_access: Option<Vec<InheritEntry>>,
    /// When set and the stream's `messageCount` differs, nothing changes: 409 `conflict`.
    pub if_message_count: Option<u64>,
    // The rest of a fetched stream, so an SDK may send the whole object back with a new title.
    // No PATCH changes them: `publisherId` and `name` must name the stream being patched
    // ([`UpdateStream::check_read_only`]); the type and the counters and times the server keeps
    // (which may have moved since the client read them) are ignored whatever they say. Never
    // forwarded to the owner.
    #[serde(skip_serializing)]
    pub publisher_id: Option<String>,
    #[serde(skip_serializing)]
    pub name: Option<String>,
    #[serde(rename = "type", skip_serializing)]
    pub stream_type: Option<serde::de::IgnoredAny>,
    #[serde(skip_serializing)]
    pub message_count: Option<serde::de::IgnoredAny>,
    #[serde(skip_serializing)]
    pub participant_count: Option<serde::de::IgnoredAny>,
    #[serde(skip_serializing)]
    pub inserted_time: Option<serde::de::IgnoredAny>,
    #[serde(skip_serializing)]
    pub updated_time: Option<serde::de::IgnoredAny>,
    #[serde(skip_serializing)]
    pub closed_time: Option<serde::de::IgnoredAny>,
}

impl UpdateStream {
    /// 400 when `publisherId` or `name` is sent and names another stream than `key`: the
    /// client would be editing the wrong object. The stream's `publisherId` is `""` for the
    /// app's streams, which the path spells `~`.
    pub fn check_read_only(&self, key: &StreamKey) -> Result<(), ApiError> {
        let sent = [
            ("publisherId", &self.publisher_id, key.publisher_id.as_str()),
            ("name", &self.name, key.name.as_str()),
        ];
        for (field, value, actual) in sent {
            if let Some(v) = value
                && v != actual
            {
                return Err(ApiError::invalid(format!(
                    "{field} {v:?} is not the stream being updated's \
                     (publisherId, name and type cannot change)"
                )));
            }
        }
        Ok(())
    }
}

/// `POST …/messages`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewPost {
    #[serde(rename = "type")]
    pub message_type: StreamType,
    /// Optional: absent or `null` posts an empty content, as every optional field treats
    /// `null` as absent.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: String,
    pub instructions: Option<Value>,
    pub client_msg_id: Option<ClientMsgId>,
}

/// `null` as absent: an empty string. [`NewPost::content`] is read through it, on both
/// transports and by the edge's one-pass post parser.
pub fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// `GET …/messages?min=&max=&limit=&order=`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistoryQuery {
    pub min: Option<u64>,
    pub max: Option<u64>,
    /// 1 or more; above [`MAX_LIMIT`] is clamped.
    pub limit: Option<u64>,
    pub order: Option<Order>,
}

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

/// History `limit`: default and ceiling (DESIGN.md §3).
pub const DEFAULT_LIMIT: u64 = 100;
pub const MAX_LIMIT: u64 = 1000;

/// The participant operations, each posting its `Streams/…` message when it changes something.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParticipantOp {
    Join,
    Leave,
    Subscribe,
    Unsubscribe,
}

/// Optional body of join / leave / subscribe / unsubscribe.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParticipantBody {
    /// Merged into the participant's `extra` (a JSON object).
    pub extra: Option<Value>,
}

/// `POST …/participants/batch` body and WebSocket `joinBatch` arguments: users the app joins
/// at once: 1 to 1000 user ids (`chorus_streams::MAX_JOIN_BATCH`; more is 413 `too_large`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinBatch {
    pub join: Vec<UserId>,
}

/// The reply to a batch join: users newly joined (a user already participating, or named
/// twice, is not counted again) and the stream's exact `participantCount` after the batch.
///
/// A retried batch whose first attempt did commit answers `joined: 0` for the users that
/// attempt joined: the state is the same, the count of this call's own effect is not.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchJoined {
    pub joined: u64,
    pub participant_count: u64,
}

/// `GET …/participants?after=&limit=&state=`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParticipantQuery {
    pub after: Option<String>,
    pub limit: Option<u64>,
    pub state: Option<ParticipantState>,
}

/// One page of participants; `next` is the cursor for the following page.
#[derive(Clone, Debug)]
pub struct ParticipantPage {
    pub participants: Vec<ParticipantRecord>,
    pub next: Option<String>,
}

/// `POST …/ephemeral`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewEphemeral {
    #[serde(rename = "type")]
    pub ephemeral_type: StreamType,
    #[serde(default)]
    pub payload: Value,
}

/// A stream as one caller may see it: the record and the caller's read level, which decides
/// the fields that are exported.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamView {
    pub record: StreamRecord,
    pub read_level: i32,
}

/// The result of a post: the stored message, and whether it was an idempotent retry.
#[derive(Clone, Debug)]
pub struct Posted {
    pub message: MessageRecord,
    pub duplicate: bool,
}

/// An error, with the current stream when a precondition failed (409 `conflict`).
#[derive(Clone, Debug)]
pub struct ServiceError {
    pub error: ApiError,
    pub stream: Option<Box<StreamView>>,
}

impl From<ApiError> for ServiceError {
    fn from(error: ApiError) -> Self {
        ServiceError { error, stream: None }
    }
}

/// A committed message as delivered to listeners: the record and its event frame
/// (`{"ev":"message","message":{…}}`), rendered once and shared by every session.
#[derive(Debug)]
pub struct Delivered {
    pub record: MessageRecord,
    pub frame: Arc<str>,
}

/// An ephemeral as relayed to listeners, with the frame rendered once.
#[derive(Debug)]
pub struct Relayed {
    /// The session that sent it, which does not get it back.
    pub origin: Option<u64>,
    pub frame: Arc<str>,
}

/// What a listening session receives for one stream.
#[derive(Clone, Debug)]
pub enum ListenEvent {
    Message(Arc<Delivered>),
    Ephemeral(Arc<Relayed>),
    /// The session fell behind: it must fetch history from `from` and listen again. Ends the
    /// listen.
    Resync {
        from: u64,
    },
    /// The stream's access rows or levels changed (in the order of its messages: everything
    /// after this was committed under the new access). Listens authorised before must be
    /// checked again before they get anything more. Never sent to a session.
    AccessChanged,
}

pub type EventStream = Pin<Box<dyn Stream<Item = ListenEvent> + Send>>;

/// A started listen: the `ok` reply's fields, then events in ordinal order (backlog first, then
/// live, each message once). Dropping `events` ends the listen.
pub struct Listening {
    pub recovered: bool,
    pub message_count: u64,
    pub events: EventStream,
}

/// Every operation on streams, wherever the stream lives.
#[async_trait::async_trait]
pub trait StreamService: Send + Sync + 'static {
    async fn create(&self, caller: &Caller, req: CreateStream) -> Result<StreamView, ServiceError>;
    async fn fetch(&self, caller: &Caller, key: &StreamKey) -> Result<StreamView, ServiceError>;
    /// One entry per key, `None` where the stream is absent or invisible to the caller; at most
    /// [`MAX_LIMIT`] keys. Each key is fetched on its own (streams of a batch live on different
    /// shards), so every entry is as current as a single fetch.
    async fn batch_get(
        &self,
        caller: &Caller,
        keys: Vec<StreamKey>,
    ) -> Result<Vec<Option<StreamView>>, ServiceError> {
        if keys.len() as u64 > MAX_LIMIT {
            return Err(ApiError::new(
                chorus_types::ErrorCode::TooLarge,
                "at most 1000 streams per batch",
            )
            .into());
        }
        let mut out = Vec::with_capacity(keys.len());
        for key in &keys {
            match self.fetch(caller, key).await {
                Ok(v) => out.push(Some(v)),
                Err(e) if e.error.code == chorus_types::ErrorCode::NotFound => out.push(None),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
    async fn update(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: UpdateStream,
    ) -> Result<StreamView, ServiceError>;
    async fn close(&self, caller: &Caller, key: &StreamKey) -> Result<StreamView, ServiceError>;
    async fn post(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: NewPost,
    ) -> Result<Posted, ServiceError>;
    async fn messages(
        &self,
        caller: &Caller,
        key: &StreamKey,
        query: HistoryQuery,
    ) -> Result<Vec<MessageRecord>, ServiceError>;
    async fn participate(
        &self,
        caller: &Caller,
        key: &StreamKey,
        op: ParticipantOp,
        body: ParticipantBody,
    ) -> Result<ParticipantRecord, ServiceError>;
    /// The app joins up to 1000 users in one replicated command (users get `forbidden`).
    async fn join_batch(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: JoinBatch,
    ) -> Result<BatchJoined, ServiceError>;
    async fn participants(
        &self,
        caller: &Caller,
        key: &StreamKey,
        query: ParticipantQuery,
    ) -> Result<ParticipantPage, ServiceError>;
    async fn access(
        &self,
        caller: &Caller,
        key: &StreamKey,
    ) -> Result<Vec<AccessRow>, ServiceError>;
    async fn set_access(
        &self,
        caller: &Caller,
        key: &StreamKey,
        rows: Vec<AccessRow>,
    ) -> Result<Vec<AccessRow>, ServiceError>;
    async fn ephemeral(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: NewEphemeral,
    ) -> Result<(), ServiceError>;
    /// `Ok` when the service can serve requests (every local shard has a leader).
    async fn readiness(&self) -> Result<(), ApiError>;
    /// Checks that `caller` may listen to `key` (read level messages, 35) and returns the
    /// stream's current `messageCount`, without opening a listen. Edges call it for each
    /// session's `listen` and share one [`listen`](Self::listen) per stream among them.
    async fn authorize_listen(&self, caller: &Caller, key: &StreamKey)
    -> Result<u64, ServiceError>;
    /// Which of `principals` may listen to `key` now, in their order: an edge's re-check of
    /// its listeners after an access change, answered from one access context whatever their
    /// number (a big room's thousands of listeners cost one call, not one each). Only the app
    /// may ask (`forbidden` otherwise). `false` is what [`authorize_listen`](Self::authorize_listen)
    /// would refuse with `not_found` or `forbidden`; an error decides nothing.
    async fn authorize_listeners(
        &self,
        caller: &Caller,
        key: &StreamKey,
        principals: Vec<Principal>,
    ) -> Result<Vec<bool>, ServiceError>;
    /// `since = None` listens from now.
    async fn listen(
        &self,
        caller: &Caller,
        key: &StreamKey,
        since: Option<u64>,
    ) -> Result<Listening, ServiceError>;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_post_content_sent_as_null_is_left_out() {
        let parse = |body: &str| serde_json::from_str::<NewPost>(body).map(|p| p.content);
        assert_eq!(parse(r#"{"type":"Chat/a","content":null}"#).unwrap(), "");
        assert_eq!(parse(r#"{"type":"Chat/a"}"#).unwrap(), "");
        assert_eq!(parse(r#"{"type":"Chat/a","content":"hi"}"#).unwrap(), "hi");
        assert!(parse(r#"{"type":"Chat/a","content":7}"#).is_err(), "still typed");
    }
}
