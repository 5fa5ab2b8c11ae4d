//! Starting, serving and stopping a node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use chorus_api::ServiceError;
use chorus_raft::grpc::{GroupTable, GrpcNetwork, PeerPool};
use chorus_raft::{GroupHost, ShardGroup, start_groups};
use chorus_storage::Db;
use chorus_storage::metrics::Registered;
use chorus_streams::validate::{EphemeralLimits, Limits};
use chorus_types::{ErrorCode, ShardId, StreamKey, shard::shard_of};
use openraft::error::{CheckIsLeaderError, RaftError};

use crate::access_source::SourceReader;
use crate::actors::ActorRegistry;
use crate::ephemeral_limit::EphemeralLimiter;
use crate::error::{NodeError, err};
use crate::hub::Hub;
use crate::proposer::ShardProposer;
use crate::source_cache::SourceCache;

/// How stream actors behave.
#[derive(Clone, Debug)]
pub struct ActorSettings {
    /// Requests queued per actor; beyond it callers get `unavailable`.
    pub mailbox: usize,
    /// Most commands per Raft entry.
    pub max_batch: usize,
    /// An actor with nothing to do for this long stops.
    pub idle: Duration,
    /// A write not applied within this long answers `timeout` (outcome unknown).
    pub request_timeout: Duration,
}

impl Default for ActorSettings {
    fn default() -> Self {
        ActorSettings {
            mailbox: 4096,
            max_batch: 512,
            idle: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: u64,
    /// Shard count for a new data dir; an existing one keeps its own and must match.
    pub shards: u16,
    pub data_dir: PathBuf,
    /// The address peers would use to reach this node (recorded in Raft membership).
    pub advertise: String,
    pub limits: Limits,
    /// The rate limit on ephemerals to big rooms, enforced where this node leads.
    pub ephemerals: EphemeralLimits,
    pub actors: ActorSettings,
    pub raft: openraft::Config,
    /// `None`: single node (every shard a one-voter group). `Some`: a cluster member.
    pub cluster: Option<ClusterSpec>,
}

/// The voters of a cluster, fixed at its first start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Node id → the address its peers reach it at (gRPC: Raft, owner calls, admin).
    pub peers: BTreeMap<u64, String>,
    /// A node that joins an existing cluster (a 4th node, or one replacing a voter): it never
    /// initialises a group, it waits to be added (`chorus admin add-node` / `replace-node`).
    /// Its `peers` need only name itself and the nodes it should know by address; the rest
    /// it learns from the Raft membership of the groups it is added to.
    pub join: bool,
}

impl ClusterSpec {
    /// Checks the member set: 3 voters (a shard must survive one failure) including `me`; a
    /// joining node lists itself and at least one node of the cluster.
    pub fn validate(&self, me: u64) -> Result<(), String> {
        if !self.peers.contains_key(&me) {
            return Err(format!("--peers must include this node ({me})"));
        }
        if self.join && self.peers.len() < 2 {
            return Err("--join needs --peers naming this node and at least one other".into());
        }
        if !self.join && self.peers.len() != 3 {
            return Err(format!(
                "a cluster has exactly 3 voters per shard; --peers lists {}",
                self.peers.len()
            ));
        }
        if self.peers.contains_key(&0) {
            return Err("node ids start at 1".into());
        }
        Ok(())
    }
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: NodeConfig,
    pub(crate) db: Db,
    pub(crate) shard_count: u16,
    /// Indexed by shard id.
    pub(crate) groups: Vec<ShardGroup>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) actors: ActorRegistry,
    /// One per shard, indexed by shard id; taken at shutdown.
    pub(crate) proposers: Vec<ShardProposer>,
    /// The groups by id, as the peer service routes to them.
    pub(crate) table: Arc<GroupTable>,
    /// The peer connections (cluster members only).
    pub(crate) pool: Option<Arc<PeerPool>>,
    /// The scrape-time collectors reading this node's groups and database; emptied at
    /// shutdown so the registry lets go of the database.
    pub(crate) collectors: Mutex<Vec<Registered>>,
    /// Per-stream budgets of ephemerals to big rooms (in memory: reset when leadership moves).
    pub(crate) ephemeral_limiter: EphemeralLimiter,
    /// The hibernation controller and peer pingers (cluster members only).
    pub(crate) hibernation: Option<tokio::task::JoinHandle<()>>,
    /// The meta group's replica on this node (cluster members only).
    pub(crate) meta: Option<ShardGroup>,
    /// The rebalancer task (cluster members only; it acts only on the meta leader). Aborted
    /// at shutdown: every step it takes is recorded in Raft, so stopping it anywhere is safe.
    pub(crate) rebalancer: Option<tokio::task::JoinHandle<()>>,
    /// Copies of access sources read from the nodes that lead their shards.
    pub(crate) sources: SourceCache,
    /// Reads an access source where its shard is led: the cluster router, set once it exists
    /// (weak: the router holds the node). Unset on a single node, where every shard is here.
    pub(crate) remote_sources: OnceLock<Weak<dyn SourceReader>>,
    /// Set when the node begins to stop: calls from edges and other nodes are refused as not
    /// run, so their callers send them elsewhere instead of getting errors from a node that is
    /// winding down (see [`Node::begin_stopping`]).
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    /// Calls from edges and other nodes running now, so a stopping node can wait for their
    /// replies before it closes the peer service.
    pub(crate) peer_calls: crate::in_flight::InFlight,
}

impl Inner {
    /// Whether this node's replica of `shard` may stand in for its leader when an access
    /// context reads it: on a single node always; in a cluster only while this node leads it
    /// (a follower may lag, and a node may hold no replica at all).
    pub(crate) fn serves_locally(&self, shard: ShardId) -> bool {
        if self.config.cluster.is_none() {
            return true;
        }
        let Some(group) = self.groups.get(usize::from(shard.0)) else { return false };
        group.raft.metrics().borrow().current_leader == Some(self.config.node_id)
    }

    /// See [`Node::ensure_linearizable`]. Marks the shard hot first, so its heartbeats (which
    /// the barrier waits on) leave without lingering for company.
    pub(crate) async fn ensure_linearizable(&self, shard: ShardId) -> Result<(), BarrierError> {
        if let Some(pool) = &self.pool {
            pool.mark_hot(shard.0);
        }
        let group = self
            .groups
            .get(usize::from(shard.0))
            .ok_or_else(|| BarrierError::NotLeader("no such shard".into()))?;
        // openraft gives each confirming heartbeat one heartbeat interval (50 ms); under load
        // a round trip can take longer, and failing then turned posts away as `not_leader`
        // from a node that did lead. A quorum that did not answer in time is asked again
        // while this node still believes it leads; a definite "not the leader" is final.
        let started = tokio::time::Instant::now();
        let deadline = started + BARRIER_PATIENCE;
        loop {
            // openraft then waits, without a bound of its own, until this replica applied up
            // to the confirmed index: a stalled apply (a disk that stopped taking writes) must
            // fail the read or the actor's turn, not hold it and its caller for good.
            let attempt = tokio::time::timeout_at(
                started + BARRIER_APPLY_PATIENCE,
                group.raft.ensure_linearizable(),
            );
            match attempt.await {
                Err(_) => return Err(BarrierError::Slow),
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))))
                    if tokio::time::Instant::now() < deadline
                        && group.raft.metrics().borrow().current_leader
                            == Some(self.config.node_id) =>
                {
                    tracing::debug!(%shard, error = %e, "read barrier: quorum slow, asking again");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(Err(e)) => return Err(BarrierError::NotLeader(e.to_string())),
            }
        }
    }
}

/// Why a read barrier failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BarrierError {
    /// This node does not (or no longer) lead the shard, or no quorum confirmed it in time.
    #[error("{0}")]
    NotLeader(String),
    /// The leadership was confirmed but this replica did not apply up to it in time.
    #[error("the shard's replica did not catch up in time")]
    Slow,
}

impl BarrierError {
    /// The error a client gets: `not_leader` sends it to another node, `unavailable` asks it
    /// to retry here later.
    pub(crate) fn to_service(&self) -> ServiceError {
        match self {
            BarrierError::NotLeader(_) => {
                err(ErrorCode::NotLeader, "this node does not lead the stream's shard")
            }
            BarrierError::Slow => {
                err(ErrorCode::Unavailable, "the stream's shard is catching up; retry shortly")
            }
        }
    }
}

/// How long a read barrier keeps asking a slow quorum before giving up.
const BARRIER_PATIENCE: Duration = Duration::from_secs(2);
/// How long a read barrier waits in all, applying included: longer than any apply takes
/// (a full batch join is well under a second), short enough that a stuck replica answers.
const BARRIER_APPLY_PATIENCE: Duration = Duration::from_secs(10);

impl Node {
    /// Opens the data dir, recovers or initialises every shard group, and returns once they
    /// are started (leaders follow within an election timeout; see [`Node::wait_ready`]).
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let (dir, wanted) = (config.data_dir.clone(), config.shards);
        let (db, shard_count) = chorus_storage::error::blocking(move || {
            let db = Db::open(&dir)?;
            // S is fixed when the data dir is created; a restart keeps the stored count.
            let count = match db.stored_shard_count()? {
                Some(stored) => stored,
                None => db.shard_count(wanted)?,
            };
            Ok((db, count))
        })
        .await?;
        if shard_count != config.shards {
            tracing::warn!(
                stored = shard_count,
                asked = config.shards,
                "the data dir keeps the shard count it was created with; the configured count \
                 applies only to a new data dir"
            );
        }
        tracing::info!(shards = shard_count, dir = %config.data_dir.display(), "storage opened");
        let hub = Arc::new(Hub::new(shard_count));
        let (groups, pool, meta) = match &config.cluster {
            None => {
                let groups = start_groups(
                    config.node_id,
                    config.advertise.clone(),
                    shard_count,
                    &db,
                    config.raft.clone(),
                    hub.clone(),
                )
                .await?;
                (groups, None, None)
            }
            Some(cluster) => {
                cluster.validate(config.node_id).map_err(|m| NodeError::Config(m.to_string()))?;
                let (groups, pool, meta) =
                    start_cluster_groups(&config, cluster, shard_count, &db, hub.clone()).await?;
                (groups, Some(pool), Some(meta))
            }
        };
        let table = Arc::new(GroupTable::default());
        for g in groups.iter().chain(meta.iter()) {
            table.insert(g.shard.0, g.raft.clone());
        }
        let rebalancer = meta.as_ref().map(|m| {
            let task = crate::meta::rebalancer::Rebalancer::new(
                config.node_id,
                db.clone(),
                m.raft.clone(),
                shard_count,
            );
            tokio::spawn(task.run())
        });
        tracing::info!(groups = groups.len(), "shard groups started");
        crate::metrics::register();
        let collectors = Mutex::new(crate::metrics::register_collectors(&groups, &db));
        let actors = ActorRegistry::new(config.actors.clone());
        let proposers = groups
            .iter()
            .map(|g| {
                ShardProposer::start(
                    config.node_id,
                    g.shard,
                    g.raft.clone(),
                    config.actors.request_timeout,
                )
            })
            .collect();
        let ephemeral_limiter = EphemeralLimiter::new(config.ephemerals.clone());
        let lease = Duration::from_millis(config.raft.election_timeout_max);
        let hibernation = pool.as_ref().map(|pool| {
            chorus_raft::grpc::hibernate::start(config.node_id, table.clone(), pool.clone(), lease)
        });
        Ok(Node {
            inner: Arc::new(Inner {
                config,
                db,
                shard_count,
                groups,
                hub,
                actors,
                proposers,
                table,
                pool,
                collectors,
                ephemeral_limiter,
                hibernation,
                meta,
                rebalancer,
                sources: SourceCache::default(),
                remote_sources: OnceLock::new(),
                stopping: std::sync::atomic::AtomicBool::new(false),
                peer_calls: crate::in_flight::InFlight::default(),
            }),
        })
    }

    /// The groups by id, for the peer gRPC service.
    pub fn group_table(&self) -> Arc<GroupTable> {
        self.inner.table.clone()
    }

    pub fn cluster(&self) -> Option<&ClusterSpec> {
        self.inner.config.cluster.as_ref()
    }

    /// Has access sources on shards this node does not lead read through `reader` (the
    /// cluster router). Set once; later calls change nothing.
    pub(crate) fn set_source_reader(&self, reader: Weak<dyn SourceReader>) {
        if self.inner.remote_sources.set(reader).is_err() {
            tracing::debug!("access source reader already set");
        }
    }

    /// The meta group's Raft handle (cluster members only).
    pub fn meta_raft(&self) -> Option<chorus_raft::Raft> {
        self.inner.meta.as_ref().map(|g| g.raft.clone())
    }

    /// The Raft handle of `shard`.
    pub fn raft(&self, shard: ShardId) -> Option<&chorus_raft::Raft> {
        self.inner.groups.get(usize::from(shard.0)).map(|g| &g.raft)
    }

    /// Waits until this node may serve a read of `shard` reflecting every write acknowledged
    /// before the call (openraft's read index: a round of heartbeats to a quorum).
    pub(crate) async fn ensure_linearizable(&self, shard: ShardId) -> Result<(), BarrierError> {
        self.inner.ensure_linearizable(shard).await
    }

    /// The highest log index this node knows to be committed in `shard` (at least what it
    /// applied).
    pub fn committed_index(&self, shard: ShardId) -> Option<u64> {
        let g = self.inner.groups.get(usize::from(shard.0))?;
        Some(g.committed.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    pub fn shard_count(&self) -> u16 {
        self.inner.shard_count
    }

    pub fn shard_of(&self, key: &StreamKey) -> ShardId {
        shard_of(key, self.inner.shard_count)
    }

    /// True when every shard held here has a leader and, on a cluster member, the meta group
    /// has one (a joined node is not ready until it has been added).
    pub fn is_ready(&self) -> bool {
        self.shards_without_leader() == 0 && self.meta_has_leader()
    }

    fn meta_has_leader(&self) -> bool {
        let Some(meta) = &self.inner.meta else { return true };
        meta.raft.metrics().borrow().current_leader.is_some()
    }

    /// Local shard groups that know no leader (`/readyz` is not ready while any does). A
    /// group with no membership yet is not a replica here (a joined node holds only its
    /// share of the shards) and does not count.
    pub fn shards_without_leader(&self) -> usize {
        let groups = self.inner.groups.iter();
        groups
            .filter(|g| {
                let m = g.raft.metrics();
                let m = m.borrow();
                m.current_leader.is_none()
                    && m.membership_config.membership().voter_ids().next().is_some()
            })
            .count()
    }

    /// Forms a cluster from nodes started with `--join` (`chorus admin init`): initialises,
    /// with `voters` as members, the groups this node is the preferred leader of — the same
    /// split a `--peers` start uses (shard `s` on `ids[s % 3]`, the meta group on `ids[0]`),
    /// so leadership starts spread. A group that already has state is left as it is, so a
    /// repeated or concurrent init changes nothing. Returns how many groups it initialised.
    pub async fn initialize(&self, voters: &BTreeMap<u64, String>) -> Result<u32, NodeError> {
        let me = self.node_id();
        let check = ClusterSpec { peers: voters.clone(), join: false };
        check.validate(me).map_err(NodeError::Config)?;
        let members: BTreeMap<u64, openraft::BasicNode> = voters
            .iter()
            .map(|(id, addr)| (*id, openraft::BasicNode { addr: addr.clone() }))
            .collect();
        let ids: Vec<u64> = voters.keys().copied().collect();
        let mut mine: Vec<&chorus_raft::Raft> = self
            .inner
            .groups
            .iter()
            .filter(|g| preferred_leader(&ids, g.shard.0) == Some(me))
            .map(|g| &g.raft)
            .collect();
        if let Some(meta) = &self.inner.meta
            && preferred_leader(&ids, crate::meta::META_GROUP) == Some(me)
        {
            mine.push(&meta.raft);
        }
        let mut initialised = 0;
        for raft in mine {
            let fresh = raft
                .is_initialized()
                .await
                .map(|done| !done)
                .map_err(|e| NodeError::Config(format!("reading group state: {e}")))?;
            if !fresh {
                continue;
            }
            match raft.initialize(members.clone()).await {
                Ok(()) => initialised += 1,
                // Another voter's state reached this group first: it is formed.
                Err(openraft::error::RaftError::APIError(
                    openraft::error::InitializeError::NotAllowed(_),
                )) => {}
                Err(e) => return Err(NodeError::Config(format!("initialising a group: {e}"))),
            }
        }
        Ok(initialised)
    }

    /// Waits until every shard has a leader, or the timeout passes.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        for g in &self.inner.groups {
            let mut rx = g.raft.metrics();
            loop {
                let m = rx.borrow().clone();
                if m.current_leader.is_some()
                    || m.membership_config.membership().voter_ids().next().is_none()
                {
                    break;
                }
                match tokio::time::timeout_at(deadline, rx.changed()).await {
                    Ok(Ok(())) => {}
                    _ => return false,
                }
            }
        }
        true
    }

    /// From now on calls arriving over the peer service (from edges and other nodes) are
    /// refused as *not run*, which their callers treat like an unreachable node: they try
    /// another node, whose router waits for the shard's next leader. Calls already running
    /// finish. Without it, a node stopping on SIGTERM answered `unavailable` ("shard proposer
    /// stopped") and `timeout` for seconds while it still looked like the leader, where a
    /// crashed one cost its clients a short pause.
    pub fn begin_stopping(&self) {
        self.inner.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Admits a call from an edge or another node: counted as running (the stopping node
    /// waits for it), or `None` once the node has begun to stop (refuse it: not run). Counted,
    /// then checked, so a call is never both uncounted and run.
    pub(crate) fn admit_peer_call(&self) -> Option<crate::in_flight::Running<'_>> {
        if self.is_stopping() {
            return None;
        }
        let running = self.inner.peer_calls.start();
        (!self.is_stopping()).then_some(running)
    }

    /// Waits (up to `limit`) until no call from an edge or another node is running here, so
    /// that closing the peer service cuts off no reply. `false` if some were still running.
    pub async fn peer_calls_finished(&self, limit: std::time::Duration) -> bool {
        tokio::time::timeout(limit, self.inner.peer_calls.idle()).await.is_ok()
    }

    /// Stops the actors, then every shard group. In-flight writes finish or fail first.
    pub async fn shutdown(&self) {
        self.begin_stopping();
        self.inner.actors.shutdown().await;
        if let Some(h) = &self.inner.hibernation {
            h.abort();
        }
        if let Some(h) = &self.inner.rebalancer {
            h.abort();
        }
        // Actors have drained, so no proposal is pending.
        for p in &self.inner.proposers {
            p.abort();
        }
        for g in self.inner.groups.iter().chain(self.inner.meta.iter()) {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(shard = %g.shard, error = %e, "shard shutdown failed");
            }
        }
        self.inner.collectors.lock().unwrap_or_else(|p| p.into_inner()).clear();
        tracing::info!("node stopped");
    }
}

/// Starts this node's replica of every shard (a node of a `--peers` cluster holds every
/// shard; a joined node's replicas stay empty until the rebalancer adds it to a shard), and
/// of the meta group, which `ids[0]` initialises with the three `--peers` as voters.
///
/// A group with no state yet is initialised, with all three voters, by one node: the shard's
/// preferred leader, `ids[shard % 3]`. It campaigns at once and almost always wins, so a new
/// cluster starts with leadership spread evenly (each node leads a third of the shards and
/// the write work is shared) instead of the initialiser leading everything. The other two
/// wait to hear from it.
async fn start_cluster_groups(
    config: &NodeConfig,
    cluster: &ClusterSpec,
    shard_count: u16,
    db: &Db,
    hub: Arc<Hub>,
) -> Result<(Vec<ShardGroup>, Arc<PeerPool>, ShardGroup), NodeError> {
    let me = config.node_id;
    let host = GroupHost::start(me, db, config.raft.clone(), hub)?;
    let pool = PeerPool::new(me, cluster.peers.clone().into_iter().collect(), shard_count);
    let members: BTreeMap<u64, openraft::BasicNode> = cluster
        .peers
        .iter()
        .map(|(id, addr)| (*id, openraft::BasicNode { addr: addr.clone() }))
        .collect();
    let ids: Vec<u64> = cluster.peers.keys().copied().collect();
    let mut groups = Vec::with_capacity(usize::from(shard_count));
    let initialises = |group: u16| !cluster.join && preferred_leader(&ids, group) == Some(me);
    for s in 0..shard_count {
        let init = initialises(s).then(|| members.clone());
        let network = GrpcNetwork::new(s, pool.clone());
        groups.push(host.group(ShardId(s), network, init).await?);
    }
    let meta_group = crate::meta::META_GROUP;
    let init = initialises(meta_group).then(|| members.clone());
    let network = GrpcNetwork::new(meta_group, pool.clone());
    let meta = host.meta_group(ShardId(meta_group), network, init).await?;
    Ok((groups, pool, meta))
}

/// The voter that initialises (and so almost always first leads) `group` in a new cluster of
/// `voters` (sorted ids): shard `s` on the `s % 3`-th, so leadership starts spread, and the
/// meta group on the first.
fn preferred_leader(voters: &[u64], group: u16) -> Option<u64> {
    if group == crate::meta::META_GROUP {
        return voters.first().copied();
    }
    voters.get(usize::from(group) % voters.len().max(1)).copied()
}
