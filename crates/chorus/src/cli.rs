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
pub struct TokenArgs {
    /// Data directory whose dev secret signs the token.
    #[arg(long, env = env::DATA, default_value = "./chorus-data")]
    pub data: PathBuf,
    /// The user id (`sub`).
    #[arg(long)]
    pub user: String,
    /// A role (repeatable).
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// Lifetime in seconds [default: 86400].
    #[arg(long, default_value_t = 86_400)]
    pub ttl: u64,
}

/// How a client command reaches and authenticates to Chorus.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Base URL of an edge.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token (a JWT or the API key) [default: the API key of --data's dev secrets].
    #[arg(long, env = "CHORUS_TOKEN")]
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
