//! The one registry of environment variables Chorus reads. Nothing else calls
//! `std::env::var` for configuration.

/// Each variable, what it overrides, and its flag.
pub const VARS: &[(&str, &str)] = &[
    ("CHORUS_CONFIG", "config file path (--config)"),
    ("CHORUS_DATA", "data directory (--data)"),
    ("CHORUS_LISTEN", "HTTP/WebSocket listen address (--listen)"),
    ("CHORUS_LOG_FORMAT", "log format: text or json"),
    ("RUST_LOG", "log filter, e.g. info,chorus_node=debug"),
    ("CHORUS_JWT_SECRET", "HS256 secret of user JWTs (nodes and edges; --jwt-secret)"),
    ("CHORUS_API_KEY", "the app's API key (nodes and edges; --api-key)"),
    ("CHORUS_PEERS", "cluster voters: id=host:port,... (--peers)"),
    ("CHORUS_NODES", "an edge's nodes: host:port,... of their peer addresses (--nodes)"),
];

pub const CONFIG: &str = "CHORUS_CONFIG";
pub const DATA: &str = "CHORUS_DATA";
pub const LISTEN: &str = "CHORUS_LISTEN";
pub const LOG_FORMAT: &str = "CHORUS_LOG_FORMAT";
pub const RUST_LOG: &str = "RUST_LOG";
pub const JWT_SECRET: &str = "CHORUS_JWT_SECRET";
pub const API_KEY: &str = "CHORUS_API_KEY";
pub const PEERS: &str = "CHORUS_PEERS";
pub const NODES: &str = "CHORUS_NODES";
