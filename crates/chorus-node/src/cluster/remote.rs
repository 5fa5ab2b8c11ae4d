//! An edge's [`StreamService`]: every operation goes over `Owner` gRPC to a node of the
//! cluster, which routes it to the stream's shard leader (`route: true`) and follows leader
//! changes there. The edge keeps no shard map: nodes already track leaders (and forward what
//! they hold no replica of), so an edge only needs one reachable node.
//!
//! Calls go to the node that leads the stream's shard as far as the edge knows (`topology`,
//! refreshed every second from the nodes), else to the node that answered last; when it
//! cannot be reached the next one is tried.
//! As on a node's router, a call whose fate is unknown (sent, connection lost) is tried again
//! only when it is safe to repeat ([`OwnerCall::is_idempotent`]); otherwise it answers
//! `timeout` (outcome unknown). A listen is a read, so opening one simply moves on to the next
//! node; once open, its events end when the node's connection breaks, and the edge's feed
//! listens again from the last ordinal it has.
//!
//! Each node is one HTTP/2 connection ([`endpoint`]); every listen the edge holds through a
//! node is a subscription on one `Owner.Subscribe` stream ([`Mux`]).
//!
//! The node list starts as the edge's `--nodes` and grows: a node that joined the cluster
//! later (`chorus admin add-node`) is in the meta group's record, which every node's status
//! carries, so the edge connects to it too and sends it the shards it leads directly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chorus_api::{
    BatchJoined, Caller, CreateStream, HistoryQuery, JoinBatch, Listening, NewEphemeral, NewPost,
    ParticipantBody, ParticipantOp, ParticipantPage, ParticipantQuery, Posted, Principal,
    ServiceError, StreamService, StreamView, UpdateStream,
};
use chorus_proto::pb;
use chorus_proto::pb::owner_client::OwnerClient;
use chorus_raft::grpc::peers::{MAX_MESSAGE, endpoint};
use chorus_types::{AccessRow, ApiError, ErrorCode, MessageRecord, ParticipantRecord, StreamKey};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::call::{CallEnvelope, OwnerCall, OwnerReply, WireCaller};
use super::call_mux::{CallStream, SendError};
use super::mux::Mux;
use super::owner::{ListenCall, ListenItem};
use super::router::unknown_outcome;
use super::topology::{self, Topology};
use crate::error::{NodeError, err};

/// Longest pause between rounds over every node.
const MAX_PAUSE: Duration = Duration::from_millis(500);
/// When a read (or a post with a `clientMsgId`) still unanswered is also sent through the next
/// node: well past the election timeout (600 ms at most by default) and far past any call's
/// usual latency, so that only a leader that stopped answering costs a second copy.
const HEDGE_AFTER: Duration = Duration::from_millis(1500);
/// How long a readiness probe waits for a node.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) struct NodeConn {
    addr: String,
    /// The connection, shared by the owner client, the subscription stream and the topology
    /// poller's admin client.
    pub(super) channel: Channel,
    client: OwnerClient<Channel>,
    /// Every listen this edge holds through the node, on one `Owner.Subscribe` stream.
    mux: tokio::sync::Mutex<Option<Arc<Mux>>>,
    /// Every call this edge sends the node, on one `Owner.Calls` stream.
    calls: CallStream,
}

/// [`StreamService`] over the `Owner` gRPC service of a cluster's nodes.
pub struct RemoteService {
    /// The `--nodes`, then nodes learned from the meta record, in the order learned (indexes
    /// never change: the topology refers to nodes by index).
    nodes: RwLock<Vec<Arc<NodeConn>>>,
    /// Which node leads which shard, learned from the nodes: calls start there.
    topology: Arc<Topology>,
    /// The node that answered last: calls start there.
    preferred: AtomicUsize,
    /// How long one operation may take, retries included. Longer than a node's own request
    /// timeout, so the node's answer (even `timeout`) arrives before the edge gives up.
    timeout: Duration,
}

impl NodeConn {
    fn new(addr: &str) -> Result<NodeConn, chorus_raft::grpc::PeerError> {
        let channel = endpoint(addr)?.connect_lazy();
        let client = OwnerClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(NodeConn {
            addr: addr.to_owned(),
            channel,
            client,
            mux: Default::default(),
            calls: CallStream::default(),
        })
    }
}

impl RemoteService {
    /// A service over the nodes at `addrs` (their peer gRPC addresses). Connections are made
    /// on first use.
    pub fn new(addrs: &[String], timeout: Duration) -> Result<Arc<RemoteService>, NodeError> {
        if addrs.is_empty() {
            return Err(NodeError::Config("an edge needs at least one node address".into()));
        }
        let mut nodes = Vec::with_capacity(addrs.len());
        for addr in addrs {
            nodes.push(Arc::new(
                NodeConn::new(addr)
                    .map_err(|e| NodeError::Config(format!("node address {addr:?}: {e}")))?,
            ));
        }
        let service = Arc::new(RemoteService {
            nodes: RwLock::new(nodes),
            topology: Arc::new(Topology::default()),
            preferred: AtomicUsize::new(0),
            timeout,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(topology::refresh(Arc::downgrade(&service)));
        }
        Ok(service)
    }

    /// The nodes known now (a snapshot: the list only grows).
    pub(super) fn nodes(&self) -> Vec<Arc<NodeConn>> {
        self.nodes.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(super) fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Adds the active nodes of the meta record in `status` that the edge does not know yet.
    pub(super) fn learn_nodes(&self, status: &pb::StatusReply) {
        let Some(meta) = &status.meta else { return };
        for n in meta.nodes.iter().filter(|n| n.status == "active") {
            let known = self.nodes().iter().any(|c| c.addr == n.peer_addr);
            if known {
                continue;
            }
            match NodeConn::new(&n.peer_addr) {
                Ok(conn) => {
                    tracing::info!(node = n.id, addr = %n.peer_addr, "learned a node");
                    let mut nodes = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
                    nodes.push(Arc::new(conn));
                }
                Err(e) => {
                    tracing::warn!(node = n.id, error = %e, "bad node address in the meta record")
                }
            }
        }
    }

    /// Where attempts start: the leader of `key`'s shard when known, else the node that
    /// answered last.
    fn start(&self, key: Option<&StreamKey>) -> usize {
        key.and_then(|k| self.topology.leader_of(k))
            .unwrap_or_else(|| self.preferred.load(Ordering::Relaxed))
    }

    fn node(&self, start: usize, attempt: usize) -> (usize, Arc<NodeConn>) {
        let nodes = self.nodes.read().unwrap_or_else(PoisonError::into_inner);
        // Never empty: `new` refuses an empty list and nodes are only added.
        let i = (start + attempt) % nodes.len().max(1);
        (i, Arc::clone(&nodes[i]))
    }

    fn node_count(&self) -> usize {
        self.nodes.read().unwrap_or_else(PoisonError::into_inner).len().max(1)
    }

    /// Waits before the next try; after a full round over the nodes, longer.
    async fn pause(&self, attempt: usize, pause: &mut Duration) {
        if attempt.is_multiple_of(self.node_count()) {
            tokio::time::sleep(*pause).await;
            *pause = (*pause * 2).min(MAX_PAUSE);
        }
    }

    async fn call(&self, caller: &Caller, call: OwnerCall) -> OwnerReply {
        let retry_unknown = call.is_idempotent();
        let bulk = call.is_bulk();
        let copied = call.may_be_copied();
        let read = call.is_read();
        let key = call.key().cloned();
        let start = self.start(call.key());
        let envelope = CallEnvelope { caller: WireCaller::from(caller), call, route: true };
        let body = match serde_json::to_vec(&envelope) {
            Ok(body) => body,
            Err(e) => return OwnerReply::from(err(ErrorCode::Internal, &e.to_string())),
        };
        let deadline = Instant::now() + self.timeout;
        if !copied || self.node_count() < 2 {
            return self.attempts(start, &body, bulk, retry_unknown, deadline).await;
        }
        // A read still unanswered after `HEDGE_AFTER` is sent again through the next node: a
        // leader that stopped without closing its connections (paused, cut off from its peers)
        // would otherwise hold it for the whole timeout, though a new leader is elected within
        // about a second and the other node routes the copy there. A post with a
        // `clientMsgId` is copied only once the edge sees another node lead its shard, so a
        // post that is merely slow (an overloaded leader) costs no second proposal. A read run
        // twice changes nothing; the dedupe table answers a post's second run with the first
        // run's ordinal.
        let first = self.attempts(start, &body, bulk, retry_unknown, deadline);
        // `None`: no copy was sent (a post whose shard showed no new leader by the deadline).
        let second = async {
            tokio::time::sleep(HEDGE_AFTER).await;
            let to = match (read, &key) {
                (false, Some(key)) => {
                    let was = Some(start % self.node_count());
                    let moved = self.topology.leader_other_than(key, was);
                    tokio::time::timeout_at(deadline, moved).await.ok()?
                }
                _ => start + 1,
            };
            Some(self.attempts(to, &body, bulk, retry_unknown, deadline).await)
        };
        tokio::pin!(first, second);
        // A failure of one copy (no leader yet, no answer in time) is not the answer while the
        // other may still succeed. Both end by the deadline.
        tokio::select! {
            reply = &mut first => {
                if !reply.is_retryable_failure() {
                    return reply;
                }
                match second.await {
                    Some(copy) if !copy.is_retryable_failure() => copy,
                    _ => reply,
                }
            }
            copy = &mut second => match copy {
                Some(copy) if !copy.is_retryable_failure() => copy,
                _ => first.await,
            },
        }
    }

    /// Sends `body` to the nodes in turn from `start` until one answers or `deadline`.
    async fn attempts(
        &self,
        start: usize,
        body: &[u8],
        bulk: bool,
        retry_unknown: bool,
        deadline: Instant,
    ) -> OwnerReply {
        let mut pause = Duration::from_millis(20);
        let mut attempt = 0;
        // Whether some node took a call and did not answer in time (rather than none being
        // reachable): the error then says so.
        let mut unanswered = false;
        loop {
            let (i, node) = self.node(start, attempt);
            match node.calls.send(&node.client, body.to_vec(), Some(deadline), bulk).await {
                Ok(reply) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return serde_json::from_slice(&reply).unwrap_or_else(|e| {
                        OwnerReply::from(err(ErrorCode::Internal, &e.to_string()))
                    });
                }
                Err(failure) => {
                    tracing::debug!(node = %node.addr, %failure, "owner call failed");
                    if let SendError::Unknown(why) = &failure {
                        if !retry_unknown {
                            return unknown_outcome(why);
                        }
                        // Still waiting when the time was up (not a broken connection).
                        unanswered |= Instant::now() >= deadline;
                    }
                }
            }
            attempt += 1;
            if Instant::now() >= deadline {
                let why = if unanswered {
                    "no node of the cluster answered in time"
                } else {
                    "no node of the cluster could be reached"
                };
                return OwnerReply::from(err(ErrorCode::Unavailable, why));
            }
            self.pause(attempt, &mut pause).await;
        }
    }

    /// The node's subscription stream, opened again if it broke.
    async fn mux(&self, node: &NodeConn, deadline: Instant) -> Option<Arc<Mux>> {
        let mut slot = tokio::time::timeout_at(deadline, node.mux.lock()).await.ok()?;
        if let Some(mux) = slot.as_ref().filter(|m| !m.is_broken()) {
            return Some(Arc::clone(mux));
        }
        // Bounded: a node that accepts connections but never answers must not hold up the
        // move to the next one.
        let mux = tokio::time::timeout_at(deadline, Mux::open(&node.client)).await.ok()??;
        *slot = Some(Arc::clone(&mux));
        Some(mux)
    }

    /// Opens a listen on one node (a subscription on its `Owner.Subscribe` stream), which
    /// routes it; `Err(None)` when that node could not be reached or has no leader to offer
    /// (try another).
    async fn open(
        &self,
        node: &NodeConn,
        body: Vec<u8>,
        deadline: Instant,
    ) -> Result<Listening, Option<ServiceError>> {
        let mux = self.mux(node, deadline).await.ok_or(None)?;
        let (first, events) = mux.subscribe(body, deadline).await.ok_or(None)?;
        match first {
            ListenItem::Started { recovered, message_count } => {
                Ok(Listening { recovered, message_count, events })
            }
            ListenItem::Failed { error }
                if matches!(error.code, ErrorCode::NotLeader | ErrorCode::Unavailable) =>
            {
                Err(None)
            }
            ListenItem::Failed { error } => Err(Some(error.into())),
            _ => Err(Some(err(ErrorCode::Internal, "subscription began without a reply"))),
        }
    }
}

#[async_trait::async_trait]
impl StreamService for RemoteService {
    async fn create(&self, caller: &Caller, req: CreateStream) -> Result<StreamView, ServiceError> {
        self.call(caller, OwnerCall::Create { req }).await.into_view()
    }

    async fn fetch(&self, caller: &Caller, key: &StreamKey) -> Result<StreamView, ServiceError> {
        self.call(caller, OwnerCall::Fetch { key: key.clone() }).await.into_view()
    }

    async fn batch_get(
        &self,
        caller: &Caller,
        keys: Vec<StreamKey>,
    ) -> Result<Vec<Option<StreamView>>, ServiceError> {
        self.call(caller, OwnerCall::BatchGet { keys }).await.into_views()
    }

    async fn update(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: UpdateStream,
    ) -> Result<StreamView, ServiceError> {
        self.call(caller, OwnerCall::Update { key: key.clone(), req }).await.into_view()
    }

    async fn close(&self, caller: &Caller, key: &StreamKey) -> Result<StreamView, ServiceError> {
        self.call(caller, OwnerCall::Close { key: key.clone() }).await.into_view()
    }

    async fn post(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: NewPost,
    ) -> Result<Posted, ServiceError> {
        self.call(caller, OwnerCall::Post { key: key.clone(), req }).await.into_posted()
    }

    async fn messages(
        &self,
        caller: &Caller,
        key: &StreamKey,
        query: HistoryQuery,
    ) -> Result<Vec<MessageRecord>, ServiceError> {
        self.call(caller, OwnerCall::Messages { key: key.clone(), query }).await.into_messages()
    }

    async fn participate(
        &self,
        caller: &Caller,
        key: &StreamKey,
        op: ParticipantOp,
        body: ParticipantBody,
    ) -> Result<ParticipantRecord, ServiceError> {
        self.call(caller, OwnerCall::Participate { key: key.clone(), op, body })
            .await
            .into_participant()
    }

    async fn join_batch(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: JoinBatch,
    ) -> Result<BatchJoined, ServiceError> {
        self.call(caller, OwnerCall::JoinBatch { key: key.clone(), req }).await.into_batch_joined()
    }

    async fn participants(
        &self,
        caller: &Caller,
        key: &StreamKey,
        query: ParticipantQuery,
    ) -> Result<ParticipantPage, ServiceError> {
        self.call(caller, OwnerCall::Participants { key: key.clone(), query }).await.into_page()
    }

    async fn access(
        &self,
        caller: &Caller,
        key: &StreamKey,
    ) -> Result<Vec<AccessRow>, ServiceError> {
        self.call(caller, OwnerCall::Access { key: key.clone() }).await.into_access()
    }

    async fn set_access(
        &self,
        caller: &Caller,
        key: &StreamKey,
        rows: Vec<AccessRow>,
    ) -> Result<Vec<AccessRow>, ServiceError> {
        self.call(caller, OwnerCall::SetAccess { key: key.clone(), rows }).await.into_access()
    }

    async fn ephemeral(
        &self,
        caller: &Caller,
        key: &StreamKey,
        req: NewEphemeral,
    ) -> Result<(), ServiceError> {
        self.call(caller, OwnerCall::Ephemeral { key: key.clone(), req }).await.into_done()
    }

    /// Ready when some node answers that every shard has a leader.
    async fn readiness(&self) -> Result<(), ApiError> {
        let body = serde_json::to_vec(&CallEnvelope {
            caller: WireCaller::from(&Caller::app()),
            call: OwnerCall::Readiness,
            route: true,
        })
        .map_err(|e| ApiError::internal(e.to_string()))?;
        let mut last = ApiError::new(ErrorCode::Unavailable, "no node of the cluster answers");
        let start = self.start(None);
        for attempt in 0..self.node_count() {
            let (i, node) = self.node(start, attempt);
            let mut request = tonic::Request::new(pb::OwnerRequest { call: body.clone() });
            request.set_timeout(PROBE_TIMEOUT);
            let Ok(response) = node.client.clone().call(request).await else { continue };
            let reply: Result<OwnerReply, _> = serde_json::from_slice(&response.into_inner().reply);
            match reply.map(OwnerReply::into_done) {
                Ok(Ok(())) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(Err(e)) => last = e.error,
                Err(e) => last = ApiError::internal(e.to_string()),
            }
        }
        Err(last)
    }

    async fn authorize_listen(
        &self,
        caller: &Caller,
        key: &StreamKey,
    ) -> Result<u64, ServiceError> {
        self.call(caller, OwnerCall::AuthorizeListen { key: key.clone() }).await.into_count()
    }

    async fn authorize_listeners(
        &self,
        caller: &Caller,
        key: &StreamKey,
        principals: Vec<Principal>,
    ) -> Result<Vec<bool>, ServiceError> {
        let principals = principals.iter().map(WireCaller::from_principal).collect();
        self.call(caller, OwnerCall::AuthorizeListeners { key: key.clone(), principals })
            .await
            .into_allowed()
    }

    async fn listen(
        &self,
        caller: &Caller,
        key: &StreamKey,
        since: Option<u64>,
    ) -> Result<Listening, ServiceError> {
        let call =
            ListenCall { caller: WireCaller::from(caller), key: key.clone(), since, route: true };
        let body =
            serde_json::to_vec(&call).map_err(|e| err(ErrorCode::Internal, &e.to_string()))?;
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(20);
        let mut attempt = 0;
        let start = self.start(Some(key));
        loop {
            let (i, node) = self.node(start, attempt);
            // Each node gets a share of the time left, so one that hangs leaves room to try
            // the others.
            let share = deadline.saturating_duration_since(Instant::now()) / 2;
            match self.open(&node, body.clone(), Instant::now() + share.max(PROBE_TIMEOUT)).await {
                Ok(listening) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    // The events end when the topology shows another leader: a leader that
                    // went silent with its connections open would otherwise hold the listen
                    // until its connection is given up, though posts already go to its
                    // successor. The caller listens again from its last ordinal.
                    let (topology, key, was) =
                        (Arc::clone(&self.topology), key.clone(), self.topology.leader_of(key));
                    let moved = async move {
                        topology.leader_other_than(&key, was).await;
                    };
                    let events =
                        Box::pin(futures_util::StreamExt::take_until(listening.events, moved));
                    return Ok(Listening { events, ..listening });
                }
                Err(Some(e)) => return Err(e),
                Err(None) => {}
            }
            attempt += 1;
            if Instant::now() >= deadline {
                return Err(err(
                    ErrorCode::Unavailable,
                    "no node of the cluster could open the listen",
                ));
            }
            self.pause(attempt, &mut pause).await;
        }
    }
}
