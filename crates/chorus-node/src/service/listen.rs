//! Authorising listens (one session's, or an edge's listeners in bulk) and opening them.

use super::*;

impl Node {
    pub(super) async fn authorize_many(
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
            .map(|principal| may_listen(&ctx, &Caller::new(principal, None)).is_ok())
            .collect())
    }

    pub(super) async fn open_listen(
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

    /// Whether `caller` may listen to `key`: the stream's message count and the parents it
    /// inherits access from (so their access changes reach the listen).
    pub(super) async fn authorized_listen(
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

/// Listening (one session's, or a listener's re-check) needs read level messages (35) on a
/// stream the caller can see.
fn may_listen(ctx: &AccessCtx, caller: &Caller) -> Result<(), ServiceError> {
    let access = visible(ctx, caller)?;
    need(access.read() >= ReadLevel::MESSAGES, "listening needs read level messages (35)")
}
