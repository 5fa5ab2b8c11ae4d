//! Joining, leaving and (un)subscribing, batch joins by the app, and participant listings.

use super::*;

impl Node {
    pub(super) async fn participate_in(
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

    pub(super) async fn join_users(
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

    pub(super) async fn list_participants(
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
}
