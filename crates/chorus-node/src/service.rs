//! [`StreamService`] over this node's shards.
//!
//! Writes go to the stream's actor; reads are served from local state after a linearizable
//! read barrier on the shard (`ensure_linearizable`), so a read never misses an acknowledged
//! write and a deposed leader refuses reads with `not_leader`.

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

    /// The template a new stream `for_stream` of `stream_type` starts from: its publisher's,
    /// else the app's. Templates live on their own shards, read as access sources are.
    async fn template(
        &self,
        for_stream: &StreamKey,
        stream_type: &chorus_types::StreamType,
    ) -> Result<Option<(StreamRecord, Vec<AccessRow>)>, ServiceError> {
        let name = StreamName::template_for(stream_type);
        let own_shard = self.shard_of(for_stream);
        for p in [for_stream.publisher_id.clone(), PublisherId::app()] {
            let key = StreamKey::new(p, name.clone());
            let found = access_ctx::source(&self.inner, own_shard, &key).await?;
            if let Some(stream) = found.stream {
                return Ok(Some((stream, found.rows)));
            }
        }
        Ok(None)
    }

    /// Reads an access source of this node's replica for another node assembling a context
    /// (`Owner.Call` `accessSource`). Only the app (nodes call as the app) may: it returns raw
    /// rows, which no user may read without admin level manage.
    async fn read_access_source(
        &self,
        caller: &Caller,
        key: &StreamKey,
    ) -> Result<SourceRows, ServiceError> {
        if caller.principal != Principal::App {
            return Err(err(ErrorCode::Forbidden, "access sources are read by nodes only"));
        }
        self.read_barrier(key).await?;
        let (shard, key) = (self.shard_of(key), key.clone());
        self.blocking_read(move |db| SourceRows::read_local(db, shard, &key)).await
    }

    async fn post_inner(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: NewPost,
    ) -> Result<Posted, ServiceError> {
        let checked = self
            .inner
            .config
            .limits
            .check_message(&req.content, req.instructions.as_ref())
            .map_err(ServiceError::from)
            .and_then(|()| server_type_for_app_only(&req.message_type, caller));
        if let Err(e) = checked {
            // Boxed: the rare retry lookup would otherwise make every post's future 2.5 KB
            // instead of 0.5 KB, copied at each move.
            return match req.client_msg_id {
                Some(id) => Box::pin(self.retried_post(caller, key, id)).await.ok_or(e),
                None => Err(e),
            };
        }
        let op = WriteOp::Post {
            message_type: req.message_type,
            content: req.content,
            instructions: req.instructions,
            client_msg_id: req.client_msg_id,
        };
        settle(self.write(caller, key, op).await?, |outcome, _access| match outcome {
            Outcome::Posted { message, duplicate } => Ok(Posted { message: *message, duplicate }),
            other => Err(other),
        })
    }
}

impl Node {
    /// A refused post that carries a `clientMsgId` may be the retry of one that was stored: a
    /// retry answers the first message whatever its body says (DESIGN.md §3 idempotency), so
    /// the client whose reply was lost is not told its stored message failed. Looked up only on
    /// refusal, after a read barrier; `None` when there is no such message (or no barrier).
    async fn retried_post(
        &self,
        caller: &Caller,
        key: &StreamKey,
        id: ClientMsgId,
    ) -> Option<Posted> {
        self.ensure_linearizable(self.shard_of(key)).await.ok()?;
        let first = crate::actor::earlier_post(
            &self.inner,
            key,
            caller.by_user_id(),
            id,
            chorus_types::Millis::now(),
        )
        .await?;
        Some(Posted { message: first, duplicate: true })
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
        let publisher = match (&caller.principal, req.publisher_id) {
            (Principal::App, Some(p)) => p,
            // `publisherId` defaults to the caller (DESIGN.md §3), and the app's own identity is
            // the publisher `""`, as its posts' `byUserId` is.
            (Principal::App, None) => PublisherId::app(),
            (Principal::User { id, .. }, None) => PublisherId::from(id.clone()),
            (Principal::User { id, .. }, Some(p)) => {
                if p.as_str() != id.as_str() {
                    return Err(err(
                        ErrorCode::Forbidden,
                        "only the app may create streams for another publisher",
                    ));
                }
                p
            }
        };
        let name = match req.name {
            Some(n) => n,
            None => StreamName::new(format!("{}/{}", req.stream_type, ulid::Ulid::new()))?,
        };
        if name.is_type_rule() {
            return Err(err(
                ErrorCode::InvalidArgument,
                "names ending in '*' are access-rule pseudo-streams",
            ));
        }
        // A URL path segment `.` or `..` is resolved away by browsers, curl and most HTTP
        // clients before it is sent, so such a stream could be created but not reached.
        if matches!(name.as_str(), "." | "..") {
            return Err(err(
                ErrorCode::InvalidArgument,
                "a stream may not be named '.' or '..' (clients resolve those path segments away)",
            ));
        }
        if name.is_template()
            && name.as_str() != StreamName::template_for(&req.stream_type).as_str()
        {
            return Err(err(
                ErrorCode::InvalidArgument,
                "a template is named '<type>/' after its own type",
            ));
        }
        let fields = FieldChanges {
            title: req.title,
            icon: req.icon,
            content: req.content,
            attributes: req.attributes,
            read_level: req.read_level,
            write_level: req.write_level,
            admin_level: req.admin_level,
            inherit_access: req.inherit_access,
        };
        self.inner.config.limits.check_fields(fields.as_fields())?;
        let template = if name.is_template() {
            None
        } else {
            let for_stream = StreamKey::new(publisher.clone(), name.clone());
            self.template(&for_stream, &req.stream_type).await?
        };
        let (stream, rows) = resolve(
            publisher,
            name,
            req.stream_type,
            fields,
            template.as_ref().map(|(s, r)| (s, r.as_slice())),
        );
        let key = stream.key();
        not_own_parent(&key, Some(&stream.inherit_access))?;
        let span = tracing::Span::current();
        span.record("shard", self.shard_of(&key).0);
        span.record("stream", tracing::field::display(&key));
        self.write_stream(caller, &key, WriteOp::Create { stream: Box::new(stream), rows }).await
    }

    #[instrument(
        level = "debug",
        name = "fetch",
        skip_all,
        fields(node = self.node_id(), shard = self.shard_of(key).0, stream = %key)
    )]
    async fn fetch(&self, caller: &Caller, key: &StreamKey) -> Result<StreamView, ServiceError> {
        self.read_barrier(key).await?;
        let ctx = self.context(key).await?;
        let access = visible(&ctx, caller)?;
        let record = ctx
            .target
            .map(|t| t.stream)
            .ok_or_else(|| err(ErrorCode::NotFound, "stream not found"))?;
        Ok(view(record, &access))
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
        let changes = FieldChanges {
            title: req.title,
            icon: req.icon,
            content: req.content,
            attributes: req.attributes,
            read_level: req.read_level,
            write_level: req.write_level,
            admin_level: req.admin_level,
            inherit_access: req.inherit_access,
        };
        self.inner.config.limits.check_fields(changes.as_fields())?;
        not_own_parent(key, changes.inherit_access.as_deref())?;
        let op = WriteOp::Update { changes, if_message_count: req.if_message_count };
        self.write_stream(caller, key, op).await
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
        self.read_barrier(key).await?;
        let ctx = self.context(key).await?;
        let access = visible(&ctx, caller)?;
        need(
            access.read() >= ReadLevel::MESSAGES,
            "reading messages needs read level messages (35)",
        )?;
        let limit = clamp_limit(q.limit)?;
        let (min, max) = (q.min.unwrap_or(1).max(1), q.max.unwrap_or(u64::MAX));
        let descending = q.order == Some(Order::Desc);
        let (shard, key) = (self.shard_of(key), key.clone());
        self.blocking_read(move |db| reads::messages(db, shard, &key, min, max, limit, descending))
            .await
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
        self.inner.config.limits.check_extra(body.extra.as_ref())?;
        let extra_max =
            Some(u32::try_from(self.inner.config.limits.extra_bytes).unwrap_or(u32::MAX));
        let action = match op {
            ParticipantOp::Join => ParticipantAction::Join,
            ParticipantOp::Leave => ParticipantAction::Leave,
            ParticipantOp::Subscribe => ParticipantAction::Subscribe,
            ParticipantOp::Unsubscribe => ParticipantAction::Unsubscribe,
        };
        settle(
            self.write(caller, key, WriteOp::Participate { action, extra: body.extra, extra_max })
                .await?,
            |outcome, _access| match outcome {
                Outcome::Participant(p) => Ok(*p),
                other => Err(other),
            },
        )
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
        // Before the size checks: a user is refused whatever it sent.
        app_only_join_batch(caller)?;
        if req.join.is_empty() {
            return Err(err(ErrorCode::InvalidArgument, "join must name at least one userId"));
        }
        if req.join.len() > MAX_JOIN_BATCH {
            return Err(err(ErrorCode::TooLarge, "at most 1000 userIds per batch join"));
        }
        settle(
            self.write(caller, key, WriteOp::JoinBatch { users: req.join }).await?,
            |outcome, _access| match outcome {
                Outcome::BatchJoined { joined, participant_count } => {
                    Ok(BatchJoined { joined, participant_count })
                }
                other => Err(other),
            },
        )
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
        // A cursor is a `next` this route gave out, so always a userId: anything else is a
        // client bug, better told than answered with the first page.
        if let Some(after) = &q.after
            && chorus_types::UserId::new(after).is_err()
        {
            return Err(err(ErrorCode::InvalidArgument, "after must be a userId (a page's next)"));
        }
        self.read_barrier(key).await?;
        let ctx = self.context(key).await?;
        let access = visible(&ctx, caller)?;
        need(
            access.read() >= ReadLevel::PARTICIPANTS,
            "listing participants needs read level participants (30)",
        )?;
        let limit = clamp_limit(q.limit)?;
        let state = q.state.unwrap_or(ParticipantState::Participating);
        let (shard, key, after) = (self.shard_of(key), key.clone(), q.after);
        let (participants, next) = self
            .blocking_read(move |db| {
                reads::participants(db, shard, &key, state, after.as_deref(), limit)
            })
            .await?;
        Ok(ParticipantPage { participants, next })
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
        self.read_barrier(key).await?;
        if key.name.is_type_rule() {
            may_manage_type_rule(key, caller)?;
        } else {
            let ctx = self.context(key).await?;
            let access = visible(&ctx, caller)?;
            need(
                access.admin() >= chorus_types::AdminLevel::MANAGE,
                "reading access rows needs admin level manage (30)",
            )?;
        }
        let (shard, key) = (self.shard_of(key), key.clone());
        self.blocking_read(move |db| reads::access_rows(db, shard, &key)).await
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
        if rows.len() > 1000 {
            return Err(err(ErrorCode::TooLarge, "at most 1000 access rows per stream"));
        }
        crate::authorize::distinct_subjects(&rows)?;
        settle(self.write(caller, key, WriteOp::SetAccess { rows }).await?, |outcome, _access| {
            match outcome {
                Outcome::Access(rows) => Ok(rows),
                other => Err(other),
            }
        })
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
        self.inner.config.limits.check_payload(&req.payload)?;
        let ctx = self.context(key).await?;
        let access = visible(&ctx, caller)?;
        need(
            access.write() >= WriteLevel::EPHEMERAL,
            "ephemerals need write level ephemeral (16)",
        )?;
        server_type_for_app_only(&req.ephemeral_type, caller)?;
        // A closed stream takes no more writes, relayed ones included.
        if ctx.stream().is_some_and(StreamRecord::is_closed) {
            return Err(err(ErrorCode::Conflict, "stream is closed"));
        }
        // Counted after the access check, so callers without access never spend a stream's
        // budget. The count is this replica's, read without a barrier: a join in flight may
        // flip a room to big one ephemeral late, which is fine for a rate limit.
        let participant_count = ctx.stream().map_or(0, |s| s.participant_count);
        if let Err(RetryAfterMs(ms)) =
            self.inner.ephemeral_limiter.admit(key, participant_count, std::time::Instant::now())
        {
            crate::metrics::EPHEMERALS_RATE_LIMITED.inc();
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "too many ephemerals to this big stream; retry after retryAfterMs",
            )
            .with_retry_after(ms)
            .into());
        }
        let frame = json!({
            "ev": "ephemeral",
            "stream": {"publisherId": key.publisher_id, "name": key.name},
            "byUserId": caller.by_user_id(),
            "type": req.ephemeral_type,
            "payload": req.payload,
        })
        .to_string();
        self.inner.hub.relay(key, Relayed { origin: caller.session, frame: frame.into() });
        Ok(())
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
        if caller.principal != Principal::App {
            return Err(err(ErrorCode::Forbidden, "only the app checks listeners in bulk"));
        }
        self.read_barrier(key).await?;
        let ctx = self.context(key).await?;
        self.inner.hub.note_parents(key, ctx.parents.iter().map(|(parent, _)| parent.key()));
        Ok(principals
            .into_iter()
            .map(|principal| may_listen(&ctx, &Caller { principal, session: None }).is_ok())
            .collect())
    }

    async fn listen(
        &self,
        caller: &Caller,
        key: &StreamKey,
        since: Option<u64>,
    ) -> Result<Listening, ServiceError> {
        let (_, parents) = self.authorized_listen(caller, key).await?;
        // Subscribe first, then read the count: every later message reaches the listen.
        let live = self.inner.hub.subscribe(key);
        // Noted once subscribed: the hub forgets the parents of streams nobody listens to.
        self.inner.hub.note_parents(key, parents.into_iter());
        let shard = self.shard_of(key);
        let k = key.clone();
        let current = self
            .blocking_read(move |db| reads::stream(db, shard, &k))
            .await?
            .map(|s| s.message_count)
            .ok_or_else(|| err(ErrorCode::NotFound, "stream not found"))?;
        let (last, recovered) = match since {
            None => (current, true),
            Some(s) if s <= current => (s, true),
            Some(_) => (current, false),
        };
        let events =
            crate::listen::start(self.inner.db.clone(), shard, key.clone(), last, current, live);
        Ok(Listening { recovered, message_count: current, events })
    }
}

#[async_trait::async_trait]
impl SourceReader for Node {
    async fn access_source(
        &self,
        caller: &Caller,
        key: &StreamKey,
    ) -> Result<SourceRows, ServiceError> {
        self.read_access_source(caller, key).await
    }
}

impl Node {
    /// Whether `caller` may listen to `key`: the stream's message count and the parents it
    /// inherits access from (so their access changes reach the listen).
    async fn authorized_listen(
        &self,
        caller: &Caller,
        key: &StreamKey,
    ) -> Result<(u64, Vec<StreamKey>), ServiceError> {
        self.read_barrier(key).await?;
        let ctx = self.context(key).await?;
        may_listen(&ctx, caller)?;
        let parents = ctx.parents.iter().map(|(parent, _)| parent.key()).collect();
        let count = ctx.target.map(|t| t.stream.message_count);
        Ok((count.ok_or_else(|| err(ErrorCode::NotFound, "stream not found"))?, parents))
    }
}

/// `Streams/…` types (messages and ephemerals alike) are the server's record of changes:
/// only the app may send them, users cannot forge them.
/// A stream inheriting from itself would only ever see its own rows again: a client's mistake.
fn not_own_parent(
    key: &StreamKey,
    parents: Option<&[chorus_types::InheritEntry]>,
) -> Result<(), ServiceError> {
    if parents.unwrap_or_default().iter().any(|p| p.key() == *key) {
        return Err(err(ErrorCode::InvalidArgument, "inheritAccess names the stream itself"));
    }
    Ok(())
}

fn server_type_for_app_only(
    ty: &chorus_types::StreamType,
    caller: &Caller,
) -> Result<(), ServiceError> {
    if ty.as_str().starts_with("Streams/") && caller.principal != Principal::App {
        return Err(err(ErrorCode::Forbidden, "Streams/ types are sent by the server"));
    }
    Ok(())
}

/// Listening (one session's, or a listener's re-check) needs read level messages (35) on a
/// stream the caller can see.
fn may_listen(ctx: &AccessCtx, caller: &Caller) -> Result<(), ServiceError> {
    let access = visible(ctx, caller)?;
    need(access.read() >= ReadLevel::MESSAGES, "listening needs read level messages (35)")
}
