//! [`StreamService`] over this node's shards.
//!
//! Writes go to the stream's actor; reads are served from local state after a linearizable
//! read barrier on the shard (`ensure_linearizable`), so a read never misses an acknowledged
//! write and a deposed leader refuses reads with `not_leader`.
//!
//! The trait's methods here name the request's span and hand over to the topic's file:
//! `streams` (create, fetch, update, close, templates), `messages` (post, history,
//! ephemerals), `participants`, `access` (rows, and sources read for other nodes) and
//! `listen`. What they share (the read barrier, the write to the actor, turning outcomes into
//! replies) stays here.

use chorus_api::{
    BatchJoined, Caller, CreateStream, DEFAULT_LIMIT, HistoryQuery, JoinBatch, Listening,
    MAX_LIMIT, NewEphemeral, NewPost, Order, ParticipantBody, ParticipantOp, ParticipantPage,
    ParticipantQuery, Posted, Principal, Relayed, ServiceError, StreamService, StreamView,
    UpdateStream,
};
use chorus_storage::reads;
use chorus_streams::access::Access;
use chorus_streams::command::Rejection;
use chorus_streams::template::resolve;
use chorus_streams::{FieldChanges, MAX_JOIN_BATCH, Outcome, ParticipantAction};
use chorus_types::{
    AccessRow, ApiError, ClientMsgId, ErrorCode, MessageRecord, ParticipantRecord,
    ParticipantState, PublisherId, ReadLevel, StreamKey, StreamName, StreamRecord, WriteLevel,
};
use serde_json::json;
use tokio::sync::oneshot;
use tracing::instrument;

use crate::access_ctx::{self, AccessCtx};
use crate::access_source::{SourceReader, SourceRows};
use crate::actor::{ActorRequest, Reply};
use crate::authorize::{WriteOp, app_only_join_batch, may_manage_type_rule, need, visible};
use crate::ephemeral_limit::RetryAfterMs;
use crate::error::{err, internal};
use crate::node::Node;

mod access;
mod listen;
mod messages;
mod participants;
mod streams;

fn view(record: StreamRecord, access: &Access) -> StreamView {
    StreamView { record, read_level: access.read() }
}

fn rejected(
    code: ErrorCode,
    reason: Rejection,
    stream: Option<Box<StreamRecord>>,
    access: &Access,
) -> ServiceError {
    ServiceError {
        error: ApiError::new(code, reason.message()),
        stream: stream.map(|s| Box::new(view(*s, access))),
    }
}

/// A write's reply: what `pick` accepts, a rejection as its error, anything else `internal`.
fn settle<T>(
    (outcome, access): (Outcome, Access),
    pick: impl FnOnce(Outcome, &Access) -> Result<T, Outcome>,
) -> Result<T, ServiceError> {
    match outcome {
        Outcome::Rejected { code, reason, stream } => Err(rejected(code, reason, stream, &access)),
        other => pick(other, &access).map_err(|o| unexpected(&o)),
    }
}

fn unexpected(o: &Outcome) -> ServiceError {
    tracing::error!(outcome = ?o, "unexpected outcome for the request");
    ApiError::internal("unexpected outcome").into()
}

impl Node {
    /// This node's Raft id, for spans and logs.
    pub fn node_id(&self) -> u64 {
        self.inner.config.node_id
    }

    /// Waits until this node may serve a read of `key`'s shard that reflects every write
    /// acknowledged before the read began.
    async fn read_barrier(&self, key: &StreamKey) -> Result<(), ServiceError> {
        self.ensure_linearizable(self.shard_of(key)).await.map_err(|e| {
            tracing::debug!(stream = %key, error = %e, "read barrier failed");
            e.to_service()
        })
    }

    async fn context(&self, key: &StreamKey) -> Result<AccessCtx, ServiceError> {
        Ok(AccessCtx::load(&self.inner, key).await?)
    }

    async fn write(
        &self,
        caller: &Caller,
        key: &StreamKey,
        op: WriteOp,
    ) -> Result<(Outcome, Access), ServiceError> {
        let (reply, rx) = oneshot::channel::<Reply>();
        let req = ActorRequest { caller: caller.clone(), op, reply };
        self.inner.actors.send(&self.inner, key, req)?;
        // Queued at the only replica there is: nothing can move it behind a later request
        // now, so the session's next one on this stream may go (`chorus_api::order`). A
        // cluster member's queue can be overtaken by a retry at the next leader.
        if self.inner.config.cluster.is_none() {
            caller.order.release();
        }
        rx.await.map_err(|_| err(ErrorCode::Unavailable, "stream actor stopped"))?
    }

    /// A write whose outcome is a stream.
    async fn write_stream(
        &self,
        caller: &Caller,
        key: &StreamKey,
        op: WriteOp,
    ) -> Result<StreamView, ServiceError> {
        settle(self.write(caller, key, op).await?, |outcome, access| match outcome {
            Outcome::Stream(s) => Ok(view(*s, access)),
            other => Err(other),
        })
    }

    async fn blocking_read<T, F>(&self, f: F) -> Result<T, ServiceError>
    where
        F: FnOnce(&chorus_storage::Db) -> chorus_storage::error::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.inner.db.clone();
        chorus_storage::error::blocking(move || f(&db)).await.map_err(internal)
    }
}

/// `limit` defaults to 100 and is clamped to 1000; 0 asks for nothing and is refused.
fn clamp_limit(limit: Option<u64>) -> Result<usize, ServiceError> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        0 => Err(err(ErrorCode::InvalidArgument, "limit must be at least 1")),
        // At most MAX_LIMIT (1000), which fits any usize.
        n => Ok(n.min(MAX_LIMIT) as usize),
    }
}

#[async_trait::async_trait]
impl StreamService for Node {
    #[instrument(
        level = "debug",
        name = "create",
        skip_all,
        fields(node = self.node_id(), shard, stream)
    )]
    async fn create(&self, caller: &Caller, req: CreateStream) -> Result<StreamView, ServiceError> {
        self.create_stream(caller, req).await
    }

    #[instrument(
        level = "debug",
        name = "fetch",
        skip_all,
        fields(node = self.node_id(), shard = self.shard_of(key).0, stream = %key)
    )]
    async fn fetch(&self, caller: &Caller, key: &StreamKey) -> Result<StreamView, ServiceError> {
        self.fetch_stream(caller, key).await
    }

    #[instrument(
        level = "debug",
        name = "update",
        skip_all,
        fields(node = self.node_id(), shard = self.shard_of(key).0, stream = %key)
    )]
    async fn update(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: UpdateStream,
    ) -> Result<StreamView, ServiceError> {
        self.update_stream(caller, key, req).await
    }

    #[instrument(
        level = "debug",
        name = "close",
        skip_all,
        fields(node = self.node_id(), shard = self.shard_of(key).0, stream = %key)
    )]
    async fn close(&self, caller: &Caller, key: &StreamKey) -> Result<StreamView, ServiceError> {
        self.write_stream(caller, key, WriteOp::Close).await
    }

    #[instrument(
        level = "debug",
        name = "post",
        skip_all,
        fields(node = self.node_id(), shard = self.shard_of(key).0, stream = %key)
    )]
    async fn post(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: NewPost,
    ) -> Result<Posted, ServiceError> {
        let accepted = std::time::Instant::now();
        let result = self.post_inner(caller, key, req).await;
        let failure = result.as_ref().err().map(|e| e.error.code);
        let duplicate = result.as_ref().is_ok_and(|posted| posted.duplicate);
        let seconds = accepted.elapsed().as_secs_f64();
        crate::metrics::record_post(failure, duplicate, seconds);
        // Inside the request span, so a debug log shows node, shard and stream with it.
        let code = failure.map_or("ok", ErrorCode::as_str);
        tracing::debug!(code, duplicate, seconds, "post answered");
        result
    }

    #[instrument(
        level = "debug",
        name = "messages",
        skip_all,
        fields(node = self.node_id(), shard = self.shard_of(key).0, stream = %key)
    )]
    async fn messages(
        &self,
        caller: &Caller,
        key: &StreamKey,
        q: HistoryQuery,
    ) -> Result<Vec<MessageRecord>, ServiceError> {
        self.read_messages(caller, key, q).await
    }

    #[instrument(
        level = "debug",
        name = "participate",
        skip_all,
        fields(node = self.node_id(), shard = self.shard_of(key).0, stream = %key)
    )]
    async fn participate(
        &self,
        caller: &Caller,
        key: &StreamKey,
        op: ParticipantOp,
        body: ParticipantBody,
    ) -> Result<ParticipantRecord, ServiceError> {
        self.participate_in(caller, key, op, body).await
    }

    /// One command for the whole batch, through the stream's actor like a single join (see
    /// `Command::JoinBatch` for why it posts one `Streams/joined`).
    #[instrument(
        level = "debug",
        name = "join_batch",
        skip_all,
        fields(node = self.node_id(), shard = self.shard_of(key).0, stream = %key, users = req.join.len())
    )]
    async fn join_batch(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: JoinBatch,
    ) -> Result<BatchJoined, ServiceError> {
        self.join_users(caller, key, req).await
    }

    #[instrument(
        level = "debug",
        name = "participants",
        skip_all,
        fields(node = self.node_id(), shard = self.shard_of(key).0, stream = %key)
    )]
    async fn participants(
        &self,
        caller: &Caller,
        key: &StreamKey,
        q: ParticipantQuery,
    ) -> Result<ParticipantPage, ServiceError> {
        self.list_participants(caller, key, q).await
    }

    #[instrument(
        level = "debug",
        name = "access",
        skip_all,
        fields(node = self.node_id(), shard = self.shard_of(key).0, stream = %key)
    )]
    async fn access(
        &self,
        caller: &Caller,
        key: &StreamKey,
    ) -> Result<Vec<AccessRow>, ServiceError> {
        self.read_access_rows(caller, key).await
    }

    #[instrument(
        level = "debug",
        name = "set_access",
        skip_all,
        fields(node = self.node_id(), shard = self.shard_of(key).0, stream = %key)
    )]
    async fn set_access(
        &self,
        caller: &Caller,
        key: &StreamKey,
        rows: Vec<AccessRow>,
    ) -> Result<Vec<AccessRow>, ServiceError> {
        self.write_access_rows(caller, key, rows).await
    }

    #[instrument(
        level = "debug",
        name = "ephemeral",
        skip_all,
        fields(node = self.node_id(), shard = self.shard_of(key).0, stream = %key)
    )]
    async fn ephemeral(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: NewEphemeral,
    ) -> Result<(), ServiceError> {
        self.send_ephemeral(caller, key, req).await
    }

    async fn readiness(&self) -> Result<(), ApiError> {
        let without_leader = self.shards_without_leader();
        if without_leader == 0 {
            Ok(())
        } else {
            Err(ApiError::unavailable(format!(
                "{without_leader} of {} shards have no known leader",
                self.shard_count()
            )))
        }
    }

    #[instrument(
        level = "debug",
        name = "listen",
        skip_all,
        fields(node = self.node_id(), shard = self.shard_of(key).0, stream = %key)
    )]
    async fn authorize_listen(
        &self,
        caller: &Caller,
        key: &StreamKey,
    ) -> Result<u64, ServiceError> {
        self.authorized_listen(caller, key).await.map(|(count, _)| count)
    }

    #[instrument(
        skip_all,
        fields(node = self.node_id(), stream = %key, principals = principals.len())
    )]
    async fn authorize_listeners(
        &self,
        caller: &Caller,
        key: &StreamKey,
        principals: Vec<Principal>,
    ) -> Result<Vec<bool>, ServiceError> {
        self.authorize_many(caller, key, principals).await
    }

    async fn listen(
        &self,
        caller: &Caller,
        key: &StreamKey,
        since: Option<u64>,
    ) -> Result<Listening, ServiceError> {
        self.open_listen(caller, key, since).await
    }
}
