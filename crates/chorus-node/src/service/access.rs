//! Access rows of a stream (read and replace), and access sources read for other nodes.

use super::*;

impl Node {
    pub(super) async fn read_access_rows(
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

    pub(super) async fn write_access_rows(
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
