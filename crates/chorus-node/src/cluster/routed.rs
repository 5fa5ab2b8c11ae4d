//! [`StreamService`] on the [`Router`]: each operation becomes an [`OwnerCall`] and is
//! dispatched to the leader of its stream's shard; `listen` goes through the relay.

use chorus_api::{
    BatchJoined, Caller, CreateStream, HistoryQuery, JoinBatch, Listening, NewEphemeral, NewPost,
    ParticipantBody, ParticipantOp, ParticipantPage, ParticipantQuery, Posted, Principal,
    ServiceError, StreamService, StreamView, UpdateStream,
};
use chorus_types::{
    AccessRow, ApiError, ErrorCode, MessageRecord, ParticipantRecord, PublisherId, StreamKey,
    StreamName,
};

use super::call::{OwnerCall, WireCaller};
use super::relay;
use super::router::Router;

/// The key a create will have, so it can be routed: the publisher as the leader will resolve
/// it, and a generated name fixed here.
fn create_key(caller: &Caller, req: &mut CreateStream) -> Result<StreamKey, ServiceError> {
    let publisher = match (&caller.principal, &req.publisher_id) {
        (_, Some(p)) => p.clone(),
        (Principal::User { id, .. }, None) => PublisherId::from(id.clone()),
        // The app's own publisher is `""` (as in `Node::create`).
        (Principal::App, None) => PublisherId::app(),
    };
    let name = match &req.name {
        Some(n) => n.clone(),
        None => {
            let n = StreamName::new(format!("{}/{}", req.stream_type, ulid::Ulid::new()))?;
            req.name = Some(n.clone());
            n
        }
    };
    Ok(StreamKey::new(publisher, name))
}

#[async_trait::async_trait]
impl StreamService for Router {
    async fn create(
        &self,
        caller: &Caller,
        mut req: CreateStream,
    ) -> Result<StreamView, ServiceError> {
        let key = create_key(caller, &mut req)?;
        self.dispatch(caller, &key, OwnerCall::Create { req }).await.into_view()
    }

    async fn fetch(&self, caller: &Caller, key: &StreamKey) -> Result<StreamView, ServiceError> {
        self.dispatch(caller, key, OwnerCall::Fetch { key: key.clone() }).await.into_view()
    }

    async fn update(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: UpdateStream,
    ) -> Result<StreamView, ServiceError> {
        self.dispatch(caller, key, OwnerCall::Update { key: key.clone(), req }).await.into_view()
    }

    async fn close(&self, caller: &Caller, key: &StreamKey) -> Result<StreamView, ServiceError> {
        self.dispatch(caller, key, OwnerCall::Close { key: key.clone() }).await.into_view()
    }

    async fn post(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: NewPost,
    ) -> Result<Posted, ServiceError> {
        self.dispatch(caller, key, OwnerCall::Post { key: key.clone(), req }).await.into_posted()
    }

    async fn messages(
        &self,
        caller: &Caller,
        key: &StreamKey,
        query: HistoryQuery,
    ) -> Result<Vec<MessageRecord>, ServiceError> {
        self.dispatch(caller, key, OwnerCall::Messages { key: key.clone(), query })
            .await
            .into_messages()
    }

    async fn participate(
        &self,
        caller: &Caller,
        key: &StreamKey,
        op: ParticipantOp,
        body: ParticipantBody,
    ) -> Result<ParticipantRecord, ServiceError> {
        self.dispatch(caller, key, OwnerCall::Participate { key: key.clone(), op, body })
            .await
            .into_participant()
    }

    async fn join_batch(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: JoinBatch,
    ) -> Result<BatchJoined, ServiceError> {
        self.dispatch(caller, key, OwnerCall::JoinBatch { key: key.clone(), req })
            .await
            .into_batch_joined()
    }

    async fn participants(
        &self,
        caller: &Caller,
        key: &StreamKey,
        query: ParticipantQuery,
    ) -> Result<ParticipantPage, ServiceError> {
        self.dispatch(caller, key, OwnerCall::Participants { key: key.clone(), query })
            .await
            .into_page()
    }

    async fn access(
        &self,
        caller: &Caller,
        key: &StreamKey,
    ) -> Result<Vec<AccessRow>, ServiceError> {
        self.dispatch(caller, key, OwnerCall::Access { key: key.clone() }).await.into_access()
    }

    async fn set_access(
        &self,
        caller: &Caller,
        key: &StreamKey,
        rows: Vec<AccessRow>,
    ) -> Result<Vec<AccessRow>, ServiceError> {
        self.dispatch(caller, key, OwnerCall::SetAccess { key: key.clone(), rows })
            .await
            .into_access()
    }

    async fn ephemeral(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: NewEphemeral,
    ) -> Result<(), ServiceError> {
        self.dispatch(caller, key, OwnerCall::Ephemeral { key: key.clone(), req }).await.into_done()
    }

    async fn readiness(&self) -> Result<(), ApiError> {
        if self.node.is_ready() {
            Ok(())
        } else {
            Err(ApiError::new(ErrorCode::Unavailable, "a shard or the meta group has no leader"))
        }
    }

    async fn authorize_listen(
        &self,
        caller: &Caller,
        key: &StreamKey,
    ) -> Result<u64, ServiceError> {
        self.dispatch(caller, key, OwnerCall::AuthorizeListen { key: key.clone() })
            .await
            .into_count()
    }

    async fn authorize_listeners(
        &self,
        caller: &Caller,
        key: &StreamKey,
        principals: Vec<Principal>,
    ) -> Result<Vec<bool>, ServiceError> {
        let principals = principals.iter().map(WireCaller::from_principal).collect();
        self.dispatch(caller, key, OwnerCall::AuthorizeListeners { key: key.clone(), principals })
            .await
            .into_allowed()
    }

    async fn listen(
        &self,
        caller: &Caller,
        key: &StreamKey,
        since: Option<u64>,
    ) -> Result<Listening, ServiceError> {
        relay::listen(self, caller, key, since).await
    }
}
