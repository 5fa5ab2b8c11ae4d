//! Routing for a cluster member: each operation runs where the stream's shard is led, here or
//! on a peer (`Owner.Call`), and leader changes show only as a short delay. (The
//! `StreamService` impl over it is in `routed.rs`.)
//!
//! The router asks the local replica of the shard who leads it, or, for a shard this node
//! does not hold, sends the call to a node that does (`holder_elsewhere`). While a shard has
//! no leader (an election), it waits for one. When the leader answers `not_leader` or cannot
//! be reached, the router retries on the new leader until the request deadline — but only
//! operations that are safe to repeat ([`OwnerCall::is_idempotent`]: reads, participant and
//! field changes, posts with a `clientMsgId`). An operation that is not safe to repeat and
//! whose fate is unknown answers `timeout` (outcome unknown), never a guess. A read or a post
//! with a `clientMsgId` forwarded to a leader that goes silent is also dispatched to the leader
//! elected in its place ([`Router::forward_or_copy`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chorus_api::{Caller, ServiceError};
use chorus_proto::pb::owner_client::OwnerClient;
use chorus_raft::grpc::peers::{MAX_MESSAGE, endpoint};
use chorus_types::{ApiError, ErrorCode, ShardId, StreamKey};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::call::{CallEnvelope, OwnerCall, OwnerReply, WireCaller, execute};
use super::call_mux::{CallStream, SendError};
use crate::access_source::{SourceReader, SourceRows};
use crate::error::err;
use crate::meta::state::MetaState;
use crate::node::Node;

/// Bits of a forwarded session id that hold the session; the node id sits above them, so a
/// session id is unique across the cluster when it travels.
const SESSION_BITS: u32 = chorus_api::SESSION_ID_BITS;

/// How long [`Router::meta_record`] reuses a read of the meta record.
const RECORD_TTL: Duration = Duration::from_secs(1);
/// How often a call waiting for its shard's election looks again at whether this node still
/// holds the shard.
const HOLDER_RECHECK: Duration = Duration::from_millis(250);
/// Tries, and the wait for each, of relaying an access notice to a node.
const NOTICE_ATTEMPTS: u32 = 3;
const NOTICE_TIMEOUT: Duration = Duration::from_secs(1);

/// A read of the meta record and when it was made (`None` inside: there was no record).
type CachedRecord = Mutex<Option<(Instant, Option<Arc<MetaState>>)>>;

/// The cached value in `slot` while fresh, else `read()` (cached).
async fn cached_record<F, Fut>(slot: &CachedRecord, read: F) -> Option<Arc<MetaState>>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Option<Arc<MetaState>>>,
{
    let cached = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some((at, record)) = cached
        && at.elapsed() < RECORD_TTL
    {
        return record;
    }
    let record = read().await;
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), record.clone()));
    record
}

/// Where an operation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Local,
    Remote(u64),
    /// A node that holds the shard, asked to route the call on to its leader (this node
    /// holds no usable replica of the shard).
    Holder(u64),
}

/// How a forwarded call failed.
enum Failure {
    /// Not sent or surely not run (connection refused, no leader known).
    NotRun(ServiceError),
    /// Sent; the outcome is unknown.
    Unknown(ServiceError),
}

/// A node as the router reaches it.
#[derive(Clone)]
struct Link {
    client: OwnerClient<Channel>,
    /// Opened on first use, again after it breaks.
    calls: Arc<CallStream>,
}

pub struct Router {
    pub(crate) node: Node,
    pub(crate) me: u64,
    peers: HashMap<u64, String>,
    /// Per node: its `Owner` client, and the `Owner.Calls` stream forwarded calls travel on.
    links: Mutex<HashMap<u64, Link>>,
    /// The meta record, when last read (see [`Router::meta_record`]).
    placement: CachedRecord,
    pub(crate) timeout: Duration,
    this: Weak<Router>,
}

impl Router {
    /// A router for `node`, which must be a cluster member.
    pub fn new(node: Node) -> Arc<Router> {
        let peers =
            node.cluster().map(|c| c.peers.clone().into_iter().collect()).unwrap_or_default();
        let timeout = node.inner.config.actors.request_timeout;
        let runtime = tokio::runtime::Handle::try_current().ok();
        Arc::new_cyclic(|this: &Weak<Router>| {
            let reader: Weak<dyn SourceReader> = this.clone();
            node.set_source_reader(reader);
            if let Some(runtime) = runtime {
                // Access changes are reported from the state machine's apply; the notices go out as
                // tasks of their own on the runtime.
                let relay = this.clone();
                node.inner.hub.set_access_relay(Box::new(move |shard, keys| {
                    if let Some(router) = relay.upgrade() {
                        router.relay_access(&runtime, shard, keys);
                    }
                }));
            }
            Router {
                me: node.node_id(),
                node,
                peers,
                links: Mutex::default(),
                placement: Mutex::default(),
                timeout,
                this: this.clone(),
            }
        })
    }

    /// This router as a shared handle (it always lives in an `Arc`).
    pub(crate) fn self_arc(&self) -> Option<Arc<Router>> {
        self.this.upgrade()
    }

    /// A session id as it travels to other nodes.
    pub(crate) fn tag_session(&self, session: Option<u64>) -> Option<u64> {
        session.map(|s| (self.me << SESSION_BITS) | (s & ((1 << SESSION_BITS) - 1)))
    }

    /// The local session id of a tagged one, when it belongs to this node.
    pub(crate) fn untag_session(&self, origin: Option<u64>) -> Option<u64> {
        origin.filter(|o| o >> SESSION_BITS == self.me).map(|o| o & ((1 << SESSION_BITS) - 1))
    }

    pub(crate) fn owner_client(&self, id: u64) -> Result<OwnerClient<Channel>, ServiceError> {
        self.link(id).map(|link| link.client)
    }

    /// How node `id` is reached, connected lazily on first use.
    fn link(&self, id: u64) -> Result<Link, ServiceError> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(link) = links.get(&id) {
            return Ok(link.clone());
        }
        let addr = self
            .address_of(id)
            .ok_or_else(|| err(ErrorCode::Unavailable, "the shard's leader is not a known node"))?;
        let channel =
            endpoint(&addr).map_err(|e| err(ErrorCode::Internal, &e.to_string()))?.connect_lazy();
        let client = OwnerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let link = Link { client, calls: Arc::default() };
        links.insert(id, link.clone());
        Ok(link)
    }

    /// Where node `id` is reached: this node's `--peers`, else (a node that joined later) its
    /// address in the Raft membership.
    fn address_of(&self, id: u64) -> Option<String> {
        if let Some(a) = self.peers.get(&id) {
            return Some(a.clone());
        }
        self.node.group_table().all().into_iter().find_map(|(_, raft)| {
            let m = raft.metrics().borrow().membership_config.clone();
            m.membership().get_node(&id).map(|n| n.addr.clone())
        })
    }

    /// For a shard this node does not hold (a joined node holds only its share; a node a
    /// replica moved away from may still think it leads, or, after a restart, wait for an
    /// election it cannot win), a node that does, from the meta record: it routes the call on
    /// to the leader. This node counts as holding the shard when both the record and its own
    /// Raft membership make it a voter. `None` when it holds the shard, or knows no record.
    async fn holder_elsewhere(&self, shard: ShardId, raft: &chorus_raft::Raft) -> Option<u64> {
        let state = self.meta_record().await?;
        let placed = state.placement.get(usize::from(shard.0))?;
        let is_voter = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.me);
        if is_voter && placed.contains(&self.me) {
            return None;
        }
        let holders: Vec<u64> = placed.iter().copied().filter(|id| *id != self.me).collect();
        // Not simply the first holder: a dead one would be asked again on every retry until
        // the deadline. The shard's leader when a ping said so, else a holder heard from lately.
        if let Some(liveness) = self.node.inner.pool.as_ref().map(|p| p.liveness()) {
            let leader = holders.iter().copied().find(|id| liveness.leads(*id, shard.0));
            let alive = || holders.iter().copied().find(|id| liveness.is_alive(*id));
            if let Some(id) = leader.or_else(alive) {
                return Some(id);
            }
        }
        holders.first().copied()
    }

    /// The meta record as this node's replica has it, read at most every [`RECORD_TTL`]
    /// (placement changes one shard at a time and a stale view costs one extra hop).
    async fn meta_record(&self) -> Option<Arc<MetaState>> {
        cached_record(&self.placement, || async {
            match crate::meta::store::read(self.node.db()).await {
                Ok(record) => record.map(|(_, s)| Arc::new(s)),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the meta record failed");
                    None
                }
            }
        })
        .await
    }

    /// After an access change applied on a shard this node leads, tells every node of the
    /// cluster that holds no replica of the shard (past 3 nodes a node holds only its share), so that
    /// its listens of these streams, and of streams inheriting from them or under a changed
    /// `<type>*` rule, are checked again there too (`Hub::remote_access_notice`). Best effort
    /// with a few retries: a node that misses it still re-reads such sources every
    /// `SOURCE_TTL` for posts and checks its listens again when they resume.
    fn relay_access(
        self: Arc<Self>,
        runtime: &tokio::runtime::Handle,
        shard: ShardId,
        keys: &[StreamKey],
    ) {
        if !self.node.inner.serves_locally(shard) {
            return;
        }
        let keys = keys.to_vec();
        runtime.spawn(async move {
            let Some(state) = self.meta_record().await else { return };
            let Some(holders) = state.placement.get(usize::from(shard.0)) else { return };
            let others = state.nodes.keys().filter(|id| **id != self.me && !holders.contains(id));
            for &id in others {
                let (router, keys) = (Arc::clone(&self), keys.clone());
                tokio::spawn(async move { router.send_access_notice(id, keys).await });
            }
        });
    }

    async fn send_access_notice(&self, id: u64, keys: Vec<StreamKey>) {
        for attempt in 1..=NOTICE_ATTEMPTS {
            let call = OwnerCall::AccessNotice { keys: keys.clone() };
            let deadline = Instant::now() + NOTICE_TIMEOUT;
            match self.forward(id, &Caller::app(), call, false, deadline).await {
                Ok(reply) if reply.error().is_none() => {
                    crate::metrics::ACCESS_NOTICES_RELAYED.inc();
                    return;
                }
                Ok(reply) => {
                    tracing::debug!(node = id, error = ?reply.error(), "access notice refused");
                    return;
                }
                Err(_) if attempt < NOTICE_ATTEMPTS => {
                    tokio::time::sleep(NOTICE_TIMEOUT).await;
                }
                Err(_) => tracing::debug!(node = id, "access notice not delivered"),
            }
        }
    }

    /// The node that leads `shard` now, waiting (until `deadline`) through an election.
    pub(crate) async fn target(
        &self,
        shard: ShardId,
        deadline: Instant,
    ) -> Result<Target, ServiceError> {
        let raft = self
            .node
            .raft(shard)
            .ok_or_else(|| err(ErrorCode::Internal, "no replica of the shard on this node"))?;
        let mut rx = raft.metrics();
        loop {
            // Asked again while waiting: a node restarted after its replica was moved away
            // starts from its own stale copy of the record, and would otherwise wait out the
            // whole deadline for an election it cannot win.
            if let Some(holder) = self.holder_elsewhere(shard, raft).await {
                return Ok(Target::Holder(holder));
            }
            if let Some(leader) = rx.borrow_and_update().current_leader {
                return Ok(if leader == self.me { Target::Local } else { Target::Remote(leader) });
            }
            if Instant::now() >= deadline {
                return Err(err(ErrorCode::Unavailable, "the stream's shard has no leader"));
            }
            let recheck = deadline.min(Instant::now() + HOLDER_RECHECK);
            if let Ok(Err(_)) = tokio::time::timeout_at(recheck, rx.changed()).await {
                return Err(err(ErrorCode::Unavailable, "shard group stopped"));
            }
        }
    }

    /// Waits a little before the next attempt: until the shard's leader changes from
    /// `previous`, or `pause` passes.
    async fn settle(&self, shard: ShardId, previous: Target, pause: Duration, deadline: Instant) {
        let until = deadline.min(Instant::now() + pause);
        let Some(raft) = self.node.raft(shard) else { return };
        let mut rx = raft.metrics();
        loop {
            let now = rx.borrow_and_update().current_leader;
            let moved = match (previous, now) {
                (_, None) => false,
                (Target::Local, Some(l)) => l != self.me,
                (Target::Remote(p), Some(l)) => l != p,
                (Target::Holder(_), Some(_)) => false,
            };
            if moved || tokio::time::timeout_at(until, rx.changed()).await.is_err() {
                return;
            }
        }
    }

    /// Sends `call` to node `id`: to run there (`route: false`, it leads the shard), or to be
    /// routed on to the leader (`route: true`, it only holds the shard).
    async fn forward(
        &self,
        id: u64,
        caller: &Caller,
        call: OwnerCall,
        route: bool,
        deadline: Instant,
    ) -> Result<OwnerReply, Failure> {
        let link = self.link(id).map_err(Failure::NotRun)?;
        let bulk = call.is_bulk();
        crate::metrics::FORWARDED_CALLS.inc();
        let mut wire = WireCaller::from(caller);
        wire.session = self.tag_session(caller.session);
        let body = serde_json::to_vec(&CallEnvelope { caller: wire, call, route })
            .map_err(|e| Failure::NotRun(err(ErrorCode::Internal, &e.to_string())))?;
        match link.calls.send(&link.client, body, Some(deadline), bulk).await {
            Ok(reply) => serde_json::from_slice(&reply)
                .map_err(|e| Failure::Unknown(err(ErrorCode::Internal, &e.to_string()))),
            Err(failure) => {
                tracing::debug!(node = id, %failure, "owner call failed");
                let e = err(ErrorCode::Unavailable, "the stream's owner could not be reached");
                Err(match failure {
                    SendError::NotRun(_) => Failure::NotRun(e),
                    SendError::Unknown(_) => Failure::Unknown(e),
                })
            }
        }
    }

    /// [`Router::forward`] of a call that may run twice (a read, a post with a `clientMsgId`)
    /// to the leader `id`; if this node's replica sees another leader elected while it is still
    /// unanswered, the call is also dispatched to that one, and the first answer wins. A leader
    /// that stopped answering with its connections open (paused, cut off from its peers) would
    /// otherwise hold it until `deadline`, though the others replace it within about a second.
    async fn forward_or_copy(
        &self,
        id: u64,
        caller: &Caller,
        key: &StreamKey,
        call: &OwnerCall,
        deadline: Instant,
    ) -> Result<OwnerReply, Failure> {
        let first = self.forward(id, caller, call.clone(), false, deadline);
        tokio::pin!(first);
        tokio::select! {
            reply = &mut first => return reply,
            () = self.leader_moved_from(self.node.shard_of(key), id, deadline) => {}
        }
        crate::metrics::COPIED_CALLS.inc();
        let copy = Box::pin(self.dispatch_until(caller, key, call.clone(), deadline));
        tokio::pin!(copy);
        // A failure of one copy (the old leader stepping down, its connection breaking) is not
        // the answer while the other may still succeed.
        tokio::select! {
            reply = &mut first => match reply {
                Ok(reply) if !reply.is_retryable_failure() => Ok(reply),
                _ => Ok(copy.await),
            },
            reply = &mut copy => {
                if reply.is_retryable_failure() { first.await } else { Ok(reply) }
            }
        }
    }

    /// Returns once this node's replica of `shard` knows of a leader other than `id` (never,
    /// if that does not happen before `deadline`).
    async fn leader_moved_from(&self, shard: ShardId, id: u64, deadline: Instant) {
        let Some(raft) = self.node.raft(shard) else { return std::future::pending().await };
        // The server metrics change with the vote and leader only, not with every append.
        let mut rx = raft.server_metrics();
        loop {
            if rx.borrow_and_update().current_leader.is_some_and(|l| l != id) {
                return;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // The group stopped, or the time is up: the forward answers for itself.
                _ => return std::future::pending().await,
            }
        }
    }

    /// Runs `call` on the leader of `key`'s shard, following leader changes.
    pub(crate) async fn dispatch(
        &self,
        caller: &Caller,
        key: &StreamKey,
        call: OwnerCall,
    ) -> OwnerReply {
        self.dispatch_until(caller, key, call, Instant::now() + self.timeout).await
    }

    /// [`Router::dispatch`], giving up at `deadline`.
    async fn dispatch_until(
        &self,
        caller: &Caller,
        key: &StreamKey,
        call: OwnerCall,
        deadline: Instant,
    ) -> OwnerReply {
        let shard = self.node.shard_of(key);
        let retry_unknown = call.is_idempotent();
        let mut pause = Duration::from_millis(20);
        loop {
            let target = match self.target(shard, deadline).await {
                Ok(t) => t,
                Err(e) => return e.into(),
            };
            let outcome = match target {
                Target::Local => Ok(execute(&self.node, caller, call.clone()).await),
                Target::Remote(id) if call.may_be_copied() => {
                    self.forward_or_copy(id, caller, key, &call, deadline).await
                }
                Target::Remote(id) => self.forward(id, caller, call.clone(), false, deadline).await,
                Target::Holder(id) => self.forward(id, caller, call.clone(), true, deadline).await,
            };
            let last = match outcome {
                Ok(reply) => match reply.error() {
                    // A deposed leader: the request may have been appended before it stepped
                    // down, so only a call that is safe to repeat goes again.
                    Some(e) if e.code == ErrorCode::NotLeader && retry_unknown => reply,
                    Some(e) if e.code == ErrorCode::NotLeader => {
                        return unknown_outcome("the shard's leader changed");
                    }
                    _ => return reply,
                },
                Err(Failure::NotRun(e)) => e.into(),
                Err(Failure::Unknown(e)) if retry_unknown => e.into(),
                Err(Failure::Unknown(_)) => {
                    return unknown_outcome("lost the connection to the stream's owner");
                }
            };
            if Instant::now() >= deadline {
                return last;
            }
            self.settle(shard, target, pause, deadline).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

/// Access sources of contexts assembled on this node, read on their shards' leaders.
#[async_trait::async_trait]
impl SourceReader for Router {
    /// Gives up after half the request timeout: the write waiting on this context then still
    /// answers `unavailable` (not run) before whoever forwarded it gives up on it.
    async fn access_source(
        &self,
        caller: &Caller,
        key: &StreamKey,
    ) -> Result<SourceRows, ServiceError> {
        let deadline = Instant::now() + self.timeout / 2;
        let call = OwnerCall::AccessSource { key: key.clone() };
        self.dispatch_until(caller, key, call, deadline).await.into_source()
    }
}

pub(super) fn unknown_outcome(why: &str) -> OwnerReply {
    OwnerReply::from(ServiceError::from(ApiError::new(
        ErrorCode::Timeout,
        format!("{why}; outcome unknown (retry with a clientMsgId to make retries safe)"),
    )))
}

/// A call that failed before it reached the peer (connect refused or timed out).
pub(super) fn is_connect_failure(status: &tonic::Status) -> bool {
    use std::error::Error;
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut source = status.source();
    while let Some(s) = source {
        let text = s.to_string();
        if text.contains("tcp connect error") || text.contains("Connection refused") {
            return true;
        }
        source = s.source();
    }
    false
}
