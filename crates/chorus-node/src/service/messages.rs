//! Posting (with the `clientMsgId` retry lookup), reading history, and relaying ephemerals.

use super::*;

impl Node {
    pub(super) async fn read_messages(
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

    pub(super) async fn send_ephemeral(
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

    pub(super) async fn post_inner(
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

/// `Streams/…` types (messages and ephemerals alike) are the server's record of changes:
/// only the app may send them, users cannot forge them.
fn server_type_for_app_only(
    ty: &chorus_types::StreamType,
    caller: &Caller,
) -> Result<(), ServiceError> {
    if ty.as_str().starts_with("Streams/") && caller.principal != Principal::App {
        return Err(err(ErrorCode::Forbidden, "Streams/ types are sent by the server"));
    }
    Ok(())
}
