//! Command-line arguments.

use std::net::SocketAddr;
use std::path::PathBuf;

use chorus_config::env;
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "chorus", version, about = "Chorus: realtime streams & messages")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node and an edge in one process (embedded RocksDB, all shards single-voter).
    Dev(DevArgs),
    /// Run a storage node of a cluster (HTTP/WebSocket API plus gRPC to its peers).
    Node(NodeArgs),
    /// Run an edge: client HTTP/WebSocket sessions and fan-out, no durable state; talks to
    /// the cluster's nodes over gRPC.
    Edge(EdgeArgs),
    /// Inspect and change a running cluster: form it, show its status, add, remove or replace
    /// nodes. `--node` takes a node's peer (gRPC) address.
    Admin(AdminArgs),
    /// Print a JWT signed with a data dir's dev secret.
    Token(TokenArgs),
    /// Post a message to a stream.
    Post(PostArgs),
    /// Print a stream's messages as they arrive, in order, resuming after reconnects.
    Tail(TailArgs),
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// HTTP/WebSocket listen address [default: 127.0.0.1:8080].
    #[arg(long, env = env::LISTEN)]
    pub listen: Option<SocketAddr>,
    /// Data directory [default: ./chorus-data].
    #[arg(long, env = env::DATA)]
    pub data: Option<PathBuf>,
    /// Config file (TOML, `version = 1`).
    #[arg(long, env = env::CONFIG)]
    pub config: Option<PathBuf>,
    /// Shard count of a new data dir [default: 64].
    #[arg(long)]
    pub shards: Option<u16>,
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// This node's id (1, 2, 3 …), unique in the cluster and never reused.
    #[arg(long)]
    pub id: u64,
    /// Data directory.
    #[arg(long, env = env::DATA)]
    pub data: PathBuf,
    /// HTTP/WebSocket API listen address (also /metrics, /healthz, /readyz).
    #[arg(long, env = env::LISTEN)]
    pub listen: SocketAddr,
    /// gRPC listen address for peers (Raft, forwarded operations, admin).
    #[arg(long)]
    pub peer_listen: SocketAddr,
    /// The cluster's voters, `id=host:port` of each node's peer address, comma-separated;
    /// must include this node. Each shard of a new cluster is initialised by its preferred
    /// leader, `ids[shard % 3]`, and the meta group by `ids[0]`. With `--join`: this node and
    /// any existing nodes it should reach by these addresses (at least one).
    #[arg(long, env = env::PEERS, value_delimiter = ',', required = true)]
    pub peers: Vec<String>,
    /// Join an existing cluster instead of forming one: never initialise a shard, wait to be
    /// added (`chorus admin add-node`, or `replace-node`).
    #[arg(long)]
    pub join: bool,
    /// Config file (TOML, `version = 1`).
    #[arg(long, env = env::CONFIG)]
    pub config: Option<PathBuf>,
    /// Shard count of a new cluster [default: 64]; every node must use the same.
    #[arg(long)]
    pub shards: Option<u16>,
    /// HS256 secret that signs user JWTs (the same on every node).
    #[arg(long, env = env::JWT_SECRET, hide_env_values = true)]
    pub jwt_secret: String,
    /// The app's API key (the same on every node).
    #[arg(long, env = env::API_KEY, hide_env_values = true)]
    pub api_key: String,
}

#[derive(Args, Debug)]
pub struct EdgeArgs {
    /// HTTP/WebSocket listen address (also /metrics, /healthz, /readyz).
    #[arg(long, env = env::LISTEN)]
    pub listen: SocketAddr,
    /// The cluster's nodes: `host:port` of their peer (gRPC) addresses, comma-separated.
    /// Any one reachable node is enough; each routes to the shard leaders.
    #[arg(long, env = env::NODES, value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// Config file (TOML, `version = 1`): log settings and `actors.request_timeout_ms`.
    #[arg(long, env = env::CONFIG)]
    pub config: Option<PathBuf>,
    /// HS256 secret that signs user JWTs (the same as the nodes').
    #[arg(long, env = env::JWT_SECRET, hide_env_values = true)]
    pub jwt_secret: String,
    /// The app's API key (the same as the nodes').
    #[arg(long, env = env::API_KEY, hide_env_values = true)]
    pub api_key: String,
    /// Outbound frames buffered per WebSocket session before it is sent a `resync`.
    #[arg(long, default_value_t = chorus_edge::config::DEFAULT_SESSION_QUEUE_LEN)]
    pub session_queue: usize,
}

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// A node's peer (gRPC) address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub node: String,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Form a new cluster from three nodes started with `--join` (which never initialise on
    /// their own): each of them initialises its share of the groups with these voters, so
    /// leadership starts spread. Nodes started with `--peers` alone form the cluster
    /// themselves and need no init; running it again changes nothing.
    Init {
        /// The three voters, `id=host:port` (peer addresses), comma-separated or repeated.
        #[arg(long, value_delimiter = ',', required = true)]
        peers: Vec<String>,
    },
    /// Nodes, shards, their leaders, terms, commit indexes and follower lag.
    Status {
        /// One line per shard instead of a summary.
        #[arg(long)]
        shards: bool,
    },
    /// Replace node OLD by node NEW (started with `chorus node --join`): NEW is added and OLD
    /// drained through the meta group, so every replica of OLD moves to NEW, shard by shard
    /// (learner, catch-up, one voter change). Waits until OLD has left the cluster.
    ReplaceNode {
        /// The id of the node to replace.
        #[arg(long)]
        old: u64,
        /// The id of the new node (never used before in this cluster).
        #[arg(long)]
        new: u64,
        /// NEW's peer (gRPC) address.
        #[arg(long)]
        addr: String,
    },
    /// Add node ID (started with `chorus node --join`) to the cluster; the meta leader then
    /// moves an even share of the shard replicas to it, one shard at a time.
    AddNode {
        /// The new node's id (never used before in this cluster).
        #[arg(long)]
        id: u64,
        /// The node's peer (gRPC) address.
        #[arg(long)]
        addr: String,
    },
    /// Drain node ID: every replica moves off it, then it leaves the cluster (stop it once
    /// `status` no longer lists it). Refused unless 3 other active nodes remain.
    RemoveNode {
        /// The id of the node to drain.
        #[arg(long)]
        id: u64,
    },
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Data directory whose dev secret signs the token (unless --jwt-secret is given).
    #[arg(long, env = env::DATA, default_value = "./chorus-data")]
    pub data: PathBuf,
    /// The cluster's HS256 secret (what nodes and edges were given) instead of a dev data dir.
    #[arg(long, env = env::JWT_SECRET, hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// The user id (`sub`).
    #[arg(long)]
    pub user: String,
    /// A role (repeatable).
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// Lifetime in seconds (at least 1).
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl: u64,
}

/// How a client command reaches and authenticates to Chorus.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Base URL of an edge.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token: a JWT or the API key [default: the API key of --data's dev secrets, else
    /// $CHORUS_API_KEY].
    #[arg(long, env = "CHORUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With the API key: act as this user.
    #[arg(long = "as")]
    pub as_user: Option<String>,
    /// Data directory to read dev secrets from when no token is given.
    #[arg(long, env = env::DATA, default_value = "./chorus-data")]
    pub data: PathBuf,
}

#[derive(Args, Debug)]
pub struct PostArgs {
    /// `publisherId/name`, e.g. `alice/Chat/room/1` (`~` for the app publisher).
    pub stream: String,
    /// The message's content.
    pub text: String,
    /// Message type.
    #[arg(long = "type", default_value = "Chat/message")]
    pub message_type: String,
    /// Idempotency key [default: a fresh ULID].
    #[arg(long)]
    pub client_msg_id: Option<String>,
    /// Seconds to wait for the server's acknowledgement (reconnecting meanwhile).
    #[arg(long, default_value_t = 10)]
    pub wait: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug)]
pub struct TailArgs {
    /// `publisherId/name`.
    pub stream: String,
    /// Start after this ordinal (0 = from the first message) [default: from now].
    #[arg(long)]
    pub since: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}
