//! One stream operation as a value: what the router sends to a shard's leader (over
//! `Owner.Call`, as JSON) or runs in place when this node leads, and what comes back.
//!
//! Routing every operation through these two types means the local and the forwarded path
//! run the very same code on the leader ([`execute`]).

use chorus_api::{
    BatchJoined, Caller, CreateStream, HistoryQuery, JoinBatch, NewEphemeral, NewPost,
    ParticipantBody, ParticipantOp, ParticipantPage, ParticipantQuery, Posted, Principal,
    ServiceError, StreamService, StreamView, UpdateStream,
};
use chorus_types::{
    AccessRow, ApiError, MessageRecord, ParticipantRecord, StreamKey, StreamRecord, UserId,
};
use serde::{Deserialize, Serialize};

use crate::access_source::{SourceReader, SourceRows};

/// [`Caller`] on the wire. The session id stays with the caller's edge: ephemerals are
/// filtered there, so it is carried only to keep the sender from getting its own.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireCaller {
    /// `None`: the app itself (API key without a user).
    pub user: Option<UserId>,
    #[serde(default)]
    pub roles: Vec<String>,
    pub session: Option<u64>,
}

impl WireCaller {
    /// A principal outside any session.
    pub fn from_principal(p: &Principal) -> Self {
        match p {
            Principal::App => WireCaller { user: None, roles: Vec::new(), session: None },
            Principal::User { id, roles } => {
                WireCaller { user: Some(id.clone()), roles: roles.clone(), session: None }
            }
        }
    }
}

impl From<&Caller> for WireCaller {
    fn from(c: &Caller) -> Self {
        WireCaller { session: c.session, ..WireCaller::from_principal(&c.principal) }
    }
}

impl From<WireCaller> for Caller {
    fn from(w: WireCaller) -> Self {
        let principal = match w.user {
            None => Principal::App,
            Some(id) => Principal::User { id, roles: w.roles },
        };
        Caller::new(principal, w.session)
    }
}

/// A [`StreamView`] on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireView {
    pub record: StreamRecord,
    pub read_level: i32,
}

impl From<StreamView> for WireView {
    fn from(v: StreamView) -> Self {
        WireView { record: v.record, read_level: v.read_level }
    }
}

impl From<WireView> for StreamView {
    fn from(v: WireView) -> Self {
        StreamView { record: v.record, read_level: v.read_level }
    }
}

/// Every operation of [`StreamService`] except `listen` (which streams: `Owner.Listen`), and
/// `AccessSource`: a node assembling an access context reads one source (a `<type>*` rule,
/// template or inheritAccess parent) on its shard's leader (nodes only, as the app).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OwnerCall {
    Create {
        req: CreateStream,
    },
    Fetch {
        key: StreamKey,
    },
    BatchGet {
        keys: Vec<StreamKey>,
    },
    Update {
        key: StreamKey,
        req: UpdateStream,
    },
    Close {
        key: StreamKey,
    },
    Post {
        key: StreamKey,
        req: NewPost,
    },
    Messages {
        key: StreamKey,
        query: HistoryQuery,
    },
    Participate {
        key: StreamKey,
        op: ParticipantOp,
        body: ParticipantBody,
    },
    Participants {
        key: StreamKey,
        query: ParticipantQuery,
    },
    Access {
        key: StreamKey,
    },
    SetAccess {
        key: StreamKey,
        rows: Vec<AccessRow>,
    },
    Ephemeral {
        key: StreamKey,
        req: NewEphemeral,
    },
    AuthorizeListen {
        key: StreamKey,
    },
    AuthorizeListeners {
        key: StreamKey,
        principals: Vec<WireCaller>,
    },
    Readiness,
    JoinBatch {
        key: StreamKey,
        req: JoinBatch,
    },
    AccessSource {
        key: StreamKey,
    },
    /// From a shard's leader to a node holding no replica of the shard: the access of these
    /// streams changed there (nodes only, as the app; see `Hub::remote_access_notice`).
    AccessNotice {
        keys: Vec<StreamKey>,
    },
}

impl OwnerCall {
    /// Calls that may be large either way (history, batch fetches, participant pages, bulk
    /// listener checks): sent as unary calls rather than on a node's shared call stream.
    pub(crate) fn is_bulk(&self) -> bool {
        matches!(
            self,
            OwnerCall::Messages { .. }
                | OwnerCall::BatchGet { .. }
                | OwnerCall::Participants { .. }
                | OwnerCall::AuthorizeListeners { .. }
        )
    }

    /// The stream it is about, when known before it runs (a create without a name gets one
    /// on the way; a batch spans streams).
    pub fn key(&self) -> Option<&StreamKey> {
        match self {
            OwnerCall::Fetch { key }
            | OwnerCall::Update { key, .. }
            | OwnerCall::Close { key }
            | OwnerCall::Post { key, .. }
            | OwnerCall::Messages { key, .. }
            | OwnerCall::Participate { key, .. }
            | OwnerCall::Participants { key, .. }
            | OwnerCall::Access { key }
            | OwnerCall::SetAccess { key, .. }
            | OwnerCall::Ephemeral { key, .. }
            | OwnerCall::AuthorizeListen { key }
            | OwnerCall::AuthorizeListeners { key, .. }
            | OwnerCall::JoinBatch { key, .. }
            | OwnerCall::AccessSource { key } => Some(key),
            OwnerCall::Create { .. }
            | OwnerCall::BatchGet { .. }
            | OwnerCall::Readiness
            | OwnerCall::AccessNotice { .. } => None,
        }
    }

    /// Reads: they change nothing, so a copy may be sent through another node while the
    /// first is still unanswered.
    pub(crate) fn is_read(&self) -> bool {
        matches!(
            self,
            OwnerCall::Fetch { .. }
                | OwnerCall::BatchGet { .. }
                | OwnerCall::Messages { .. }
                | OwnerCall::Participants { .. }
                | OwnerCall::Access { .. }
                | OwnerCall::AuthorizeListen { .. }
                | OwnerCall::AuthorizeListeners { .. }
                | OwnerCall::Readiness
                | OwnerCall::AccessSource { .. }
        )
    }

    /// Whether an edge may send a copy through another node while the first is still
    /// unanswered: reads, and posts with a `clientMsgId`. Both copies may run; the leader's
    /// replicated dedupe table answers the later one with the first's ordinal, so the stream
    /// gets the message once. Other writes are not copied: a field change run again after
    /// another client's change to the same field would undo that change.
    pub(crate) fn may_be_copied(&self) -> bool {
        match self {
            OwnerCall::Post { req, .. } => req.client_msg_id.is_some(),
            call => call.is_read(),
        }
    }

    /// Whether running it twice has the effect of running it once, so the router may retry it
    /// when it cannot tell whether the first attempt took effect. A post is safe only with a
    /// `clientMsgId` (the leader's dedupe table answers the retry with the first ordinal).
    pub fn is_idempotent(&self) -> bool {
        match self {
            OwnerCall::Create { .. } | OwnerCall::Ephemeral { .. } => false,
            OwnerCall::Post { req, .. } => req.client_msg_id.is_some(),
            OwnerCall::Fetch { .. }
            | OwnerCall::BatchGet { .. }
            | OwnerCall::Update { .. }
            | OwnerCall::Close { .. }
            | OwnerCall::Messages { .. }
            | OwnerCall::Participate { .. }
            | OwnerCall::Participants { .. }
            | OwnerCall::Access { .. }
            | OwnerCall::SetAccess { .. }
            | OwnerCall::AuthorizeListen { .. }
            | OwnerCall::AuthorizeListeners { .. }
            | OwnerCall::AccessSource { .. }
            | OwnerCall::AccessNotice { .. }
            | OwnerCall::Readiness => true,
            // Joining a participant twice leaves one participant (the retry reports
            // `joined: 0` for the users the first attempt joined; the state is the same).
            OwnerCall::JoinBatch { .. } => true,
        }
    }
}

/// An [`OwnerCall`] with its caller: the body of `Owner.Call`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CallEnvelope {
    pub caller: WireCaller,
    pub call: OwnerCall,
    /// Set by edges, which do not track shard leaders: the receiving node routes the call to
    /// the stream's leader itself. Unset between nodes: the sender already routed it, and the
    /// receiver answers `not_leader` if it no longer leads.
    #[serde(default)]
    pub route: bool,
}

/// The result of an [`OwnerCall`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OwnerReply {
    View(WireView),
    Views(Vec<Option<WireView>>),
    Posted { message: MessageRecord, duplicate: bool },
    Messages(Vec<MessageRecord>),
    Participant(ParticipantRecord),
    Page { participants: Vec<ParticipantRecord>, next: Option<String> },
    Access(Vec<AccessRow>),
    Done,
    Count(u64),
    Allowed(Vec<bool>),
    BatchJoined(BatchJoined),
    Source(SourceRows),
    Error { error: ApiError, stream: Option<WireView> },
}

impl From<ServiceError> for OwnerReply {
    fn from(e: ServiceError) -> Self {
        OwnerReply::Error { error: e.error, stream: e.stream.map(|s| WireView::from(*s)) }
    }
}

impl OwnerReply {
    /// The error this reply carries, if it is one.
    pub fn error(&self) -> Option<&ApiError> {
        match self {
            OwnerReply::Error { error, .. } => Some(error),
            _ => None,
        }
    }

    /// A failure that says nothing of the operation itself (no leader, no answer in time, the
    /// leader changed): when another copy of the call is under way, its answer is the better one.
    pub(crate) fn is_retryable_failure(&self) -> bool {
        self.error().is_some_and(|e| e.code.is_failover())
    }

    fn unexpected() -> ServiceError {
        ApiError::internal("unexpected reply from the stream's owner").into()
    }

    /// The service error this reply carries, or `Ok(self)`.
    fn ok(self) -> Result<OwnerReply, ServiceError> {
        match self {
            OwnerReply::Error { error, stream } => {
                Err(ServiceError { error, stream: stream.map(|s| Box::new(s.into())) })
            }
            other => Ok(other),
        }
    }

    pub fn into_view(self) -> Result<StreamView, ServiceError> {
        match self.ok()? {
            OwnerReply::View(v) => Ok(v.into()),
            _ => Err(Self::unexpected()),
        }
    }

    pub fn into_views(self) -> Result<Vec<Option<StreamView>>, ServiceError> {
        match self.ok()? {
            OwnerReply::Views(v) => Ok(v.into_iter().map(|o| o.map(Into::into)).collect()),
            _ => Err(Self::unexpected()),
        }
    }

    pub fn into_posted(self) -> Result<Posted, ServiceError> {
        match self.ok()? {
            OwnerReply::Posted { message, duplicate } => Ok(Posted { message, duplicate }),
            _ => Err(Self::unexpected()),
        }
    }

    pub fn into_messages(self) -> Result<Vec<MessageRecord>, ServiceError> {
        match self.ok()? {
            OwnerReply::Messages(m) => Ok(m),
            _ => Err(Self::unexpected()),
        }
    }

    pub fn into_participant(self) -> Result<ParticipantRecord, ServiceError> {
        match self.ok()? {
            OwnerReply::Participant(p) => Ok(p),
            _ => Err(Self::unexpected()),
        }
    }

    pub fn into_page(self) -> Result<ParticipantPage, ServiceError> {
        match self.ok()? {
            OwnerReply::Page { participants, next } => Ok(ParticipantPage { participants, next }),
            _ => Err(Self::unexpected()),
        }
    }

    pub fn into_access(self) -> Result<Vec<AccessRow>, ServiceError> {
        match self.ok()? {
            OwnerReply::Access(rows) => Ok(rows),
            _ => Err(Self::unexpected()),
        }
    }

    pub fn into_count(self) -> Result<u64, ServiceError> {
        match self.ok()? {
            OwnerReply::Count(n) => Ok(n),
            _ => Err(Self::unexpected()),
        }
    }

    pub fn into_allowed(self) -> Result<Vec<bool>, ServiceError> {
        match self.ok()? {
            OwnerReply::Allowed(a) => Ok(a),
            _ => Err(Self::unexpected()),
        }
    }

    pub fn into_batch_joined(self) -> Result<BatchJoined, ServiceError> {
        match self.ok()? {
            OwnerReply::BatchJoined(b) => Ok(b),
            _ => Err(Self::unexpected()),
        }
    }

    pub fn into_source(self) -> Result<SourceRows, ServiceError> {
        match self.ok()? {
            OwnerReply::Source(rows) => Ok(rows),
            _ => Err(Self::unexpected()),
        }
    }

    pub fn into_done(self) -> Result<(), ServiceError> {
        match self.ok()? {
            OwnerReply::Done => Ok(()),
            _ => Err(Self::unexpected()),
        }
    }
}

fn reply<T>(r: Result<T, ServiceError>, f: impl FnOnce(T) -> OwnerReply) -> OwnerReply {
    match r {
        Ok(v) => f(v),
        Err(e) => e.into(),
    }
}

/// Runs `call` on `node`: a [`Node`](crate::Node) runs it here (the leader side); a
/// [`Router`](super::Router) routes it to the stream's leader (a call an edge sent to any
/// node).
pub async fn execute<S: StreamService + SourceReader + ?Sized>(
    node: &S,
    caller: &Caller,
    call: OwnerCall,
) -> OwnerReply {
    match call {
        OwnerCall::Create { req } => {
            reply(node.create(caller, req).await, |v| OwnerReply::View(v.into()))
        }
        OwnerCall::Fetch { key } => {
            reply(node.fetch(caller, &key).await, |v| OwnerReply::View(v.into()))
        }
        OwnerCall::BatchGet { keys } => reply(node.batch_get(caller, keys).await, |v| {
            OwnerReply::Views(v.into_iter().map(|o| o.map(Into::into)).collect())
        }),
        OwnerCall::Update { key, req } => {
            reply(node.update(caller, &key, req).await, |v| OwnerReply::View(v.into()))
        }
        OwnerCall::Close { key } => {
            reply(node.close(caller, &key).await, |v| OwnerReply::View(v.into()))
        }
        OwnerCall::Post { key, req } => reply(node.post(caller, &key, req).await, |p| {
            OwnerReply::Posted { message: p.message, duplicate: p.duplicate }
        }),
        OwnerCall::Messages { key, query } => {
            reply(node.messages(caller, &key, query).await, OwnerReply::Messages)
        }
        OwnerCall::Participate { key, op, body } => {
            reply(node.participate(caller, &key, op, body).await, OwnerReply::Participant)
        }
        OwnerCall::Participants { key, query } => {
            reply(node.participants(caller, &key, query).await, |p| OwnerReply::Page {
                participants: p.participants,
                next: p.next,
            })
        }
        OwnerCall::Access { key } => reply(node.access(caller, &key).await, OwnerReply::Access),
        OwnerCall::SetAccess { key, rows } => {
            reply(node.set_access(caller, &key, rows).await, OwnerReply::Access)
        }
        OwnerCall::Ephemeral { key, req } => {
            reply(node.ephemeral(caller, &key, req).await, |()| OwnerReply::Done)
        }
        OwnerCall::AuthorizeListen { key } => {
            reply(node.authorize_listen(caller, &key).await, OwnerReply::Count)
        }
        OwnerCall::AuthorizeListeners { key, principals } => {
            let principals = principals.into_iter().map(|w| Caller::from(w).principal).collect();
            reply(node.authorize_listeners(caller, &key, principals).await, OwnerReply::Allowed)
        }
        OwnerCall::Readiness => {
            reply(node.readiness().await.map_err(Into::into), |()| OwnerReply::Done)
        }
        OwnerCall::JoinBatch { key, req } => {
            reply(node.join_batch(caller, &key, req).await, OwnerReply::BatchJoined)
        }
        OwnerCall::AccessSource { key } => {
            reply(node.access_source(caller, &key).await, OwnerReply::Source)
        }
        // Taken by the node it is sent to before anything is routed (`owner::run`).
        OwnerCall::AccessNotice { .. } => OwnerReply::from(crate::error::err(
            chorus_types::ErrorCode::InvalidArgument,
            "an access notice is for the node it is sent to",
        )),
    }
}
