//! Chorus's configuration: a versioned TOML file, overridden by flags and the environment
//! variables of [`env`], validated once into [`Config`]. Nothing downstream sees unvalidated
//! values.
//!
//! ```toml
//! version = 1
//! data_dir = "./chorus-data"
//! listen = "127.0.0.1:8080"
//! shards = 64
//! [limits]
//! message_bytes = 65536
//! [ephemerals]
//! big_room_participants = 1000
//! big_room_per_second = 20
//! big_room_burst = 40
//! ```
//!
//! The timeout relations enforced by [`Config::validate`] are written down in
//! `docs/timeouts.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chorus_streams::validate::{EphemeralLimits, Limits};
use serde::Deserialize;

pub mod env;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // Not `source` fields: the message already carries the cause, and a source would make
    // `{:#}` print it twice.
    #[error("reading config file {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("config file {path}: {error}")]
    Parse { path: PathBuf, error: toml::de::Error },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Log output format.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Raft timing of the shard groups. See `docs/timeouts.md`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTiming {
    /// Leader heartbeat interval, ms. Default 50.
    pub heartbeat_ms: u64,
    /// Election timeout range, ms. Defaults 300–600; min must exceed 3 heartbeats. A failover
    /// (detection + election) fits in well under a second.
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Log entries between shard snapshots. Default 50,000.
    pub snapshot_every_logs: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 50,
            election_min_ms: 300,
            election_max_ms: 600,
            snapshot_every_logs: 50_000,
        }
    }
}

/// Stream actors.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Actors {
    /// Requests queued per stream actor before callers get `unavailable`. Default 4096.
    pub mailbox: usize,
    /// Most commands folded into one Raft entry. Default 512.
    pub max_batch: usize,
    /// An actor with no request for this long stops, ms. Default 30,000.
    pub idle_ms: u64,
    /// A request not committed within this long answers `timeout`, ms. Default 10,000; must
    /// exceed the election timeout so that one failover fits.
    pub request_timeout_ms: u64,
}

impl Default for Actors {
    fn default() -> Self {
        Actors { mailbox: 4096, max_batch: 512, idle_ms: 30_000, request_timeout_ms: 10_000 }
    }
}

/// The configuration file, version 1.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileV1 {
    /// `1`; checked before the rest is read.
    pub version: toml::Value,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub node_id: Option<u64>,
    pub shards: Option<u16>,
    pub log_format: Option<LogFormat>,
    pub log_filter: Option<String>,
    #[serde(default)]
    pub limits: Option<Limits>,
    #[serde(default)]
    pub raft: RaftTiming,
    #[serde(default)]
    pub actors: Actors,
    /// The rate limit on ephemerals to big rooms (see [`EphemeralLimits`]).
    #[serde(default)]
    pub ephemerals: EphemeralLimits,
    /// Browser origins allowed to call the HTTP API (CORS); see [`Config::cors_origins`].
    pub cors_origins: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct VersionProbe {
    version: Option<toml::Value>,
}

/// The validated configuration of a process.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where RocksDB, snapshots and dev secrets live. Default `./chorus-data`.
    pub data_dir: PathBuf,
    /// HTTP/WebSocket listen address. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// This node's Raft id. Default 1.
    pub node_id: u64,
    /// Shard count, fixed at first start. Default 64, 1–4096.
    pub shards: u16,
    pub log_format: LogFormat,
    /// `RUST_LOG`-style filter. Default `info,openraft=error,openraft::replication=off`:
    /// openraft warns about every vote that crossed another and logs each failed replication
    /// call to a peer that is starting or down as an ERROR, so a healthy cluster's start
    /// printed dozens of them. Replication health is in the metrics
    /// (`chorus_raft_shard_apply_lag`, `chorus_raft_peer_*`); openraft's other errors stay.
    pub log_filter: String,
    pub limits: Limits,
    pub raft: RaftTiming,
    pub actors: Actors,
    /// Ephemerals to streams above `big_room_participants` participants: at most
    /// `big_room_per_second`, bursts of `big_room_burst`. Defaults 1000, 20, 40.
    pub ephemerals: EphemeralLimits,
    /// Origins whose browser pages may call the HTTP API: `["*"]` (the default: any origin),
    /// a list of `scheme://host[:port]`, or `[]` (no CORS headers). Requests authenticate
    /// with a bearer token, never a cookie, so a page of another origin can do nothing its
    /// user's token does not already allow; the WebSocket needs no CORS.
    pub cors_origins: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./chorus-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            node_id: 1,
            shards: 64,
            log_format: LogFormat::Text,
            log_filter: "info,openraft=error,openraft::replication=off".into(),
            limits: Limits::default(),
            raft: RaftTiming::default(),
            actors: Actors::default(),
            ephemerals: EphemeralLimits::default(),
            cors_origins: vec!["*".into()],
        }
    }
}

impl Config {
    /// Reads a config file (when given) over the defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .map_err(|error| ConfigError::Read { path: path.to_path_buf(), error })?;
            config.merge_file(path, &text)?;
        }
        Ok(config)
    }

    fn merge_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let parse_err = |error| ConfigError::Parse { path: path.to_path_buf(), error };
        let probe: VersionProbe = toml::from_str(text).map_err(parse_err)?;
        match probe.version {
            None => {
                return Err(ConfigError::Invalid(format!(
                    "{}: missing `version = 1` at the top",
                    path.display()
                )));
            }
            Some(toml::Value::Integer(1)) => {}
            Some(toml::Value::String(v)) if v == "1" => {}
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "{}: unsupported config version {other} (this chorus reads version 1)",
                    path.display()
                )));
            }
        }
        // Read as the struct itself (no tagged enum, which buffers the document and loses
        // where an error is): a bad value is reported with its line and key.
        let file: FileV1 = toml::from_str(text).map_err(parse_err)?;
        if let Some(v) = file.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = file.listen {
            self.listen = v;
        }
        if let Some(v) = file.node_id {
            self.node_id = v;
        }
        if let Some(v) = file.shards {
            self.shards = v;
        }
        if let Some(v) = file.log_format {
            self.log_format = v;
        }
        if let Some(v) = file.log_filter {
            self.log_filter = v;
        }
        if let Some(v) = file.limits {
            self.limits = v;
        }
        if let Some(v) = file.cors_origins {
            self.cors_origins = v;
        }
        self.raft = file.raft;
        self.actors = file.actors;
        self.ephemerals = file.ephemerals;
        Ok(())
    }

    /// Checks every value and the relations between them.
    ///
    /// Durations are bounded by [`MAX_DURATION_MS`].
    pub fn validate(self) -> Result<Config, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.shards == 0 || self.shards > 4096 {
            return bad(format!("shards must be 1-4096, got {}", self.shards));
        }
        if self.node_id == 0 {
            return bad("node_id must be at least 1".into());
        }
        let (r, a) = (&self.raft, &self.actors);
        // Durations are added to clock readings (`Instant + timeout` panics on overflow) and
        // multiplied below: a bound keeps every such sum in range, and no sane value is near it.
        for (name, ms) in [
            ("raft.heartbeat_ms", r.heartbeat_ms),
            ("raft.election_min_ms", r.election_min_ms),
            ("raft.election_max_ms", r.election_max_ms),
            ("actors.idle_ms", a.idle_ms),
            ("actors.request_timeout_ms", a.request_timeout_ms),
        ] {
            if ms > MAX_DURATION_MS {
                return bad(format!(
                    "{name} must be at most {MAX_DURATION_MS} (one day), got {ms}"
                ));
            }
        }
        if r.heartbeat_ms == 0 {
            return bad("raft.heartbeat_ms must be at least 1".into());
        }
        if r.election_min_ms <= 3 * r.heartbeat_ms {
            return bad(format!(
                "raft.election_min_ms ({}) must exceed 3 x heartbeat_ms ({})",
                r.election_min_ms, r.heartbeat_ms
            ));
        }
        if r.election_max_ms <= r.election_min_ms {
            return bad("raft.election_max_ms must exceed election_min_ms".into());
        }
        if r.snapshot_every_logs < 100 {
            return bad("raft.snapshot_every_logs must be at least 100".into());
        }
        if a.mailbox == 0 || a.max_batch == 0 || a.idle_ms == 0 {
            return bad("actors.mailbox, max_batch and idle_ms must be at least 1".into());
        }
        if a.request_timeout_ms <= r.election_max_ms {
            return bad(format!(
                "actors.request_timeout_ms ({}) must exceed raft.election_max_ms ({}) so a \
                 failover fits in one request",
                a.request_timeout_ms, r.election_max_ms
            ));
        }
        let l = &self.limits;
        if l.content_chars == 0 || l.attributes_bytes == 0 || l.message_bytes == 0 {
            return bad("limits must be at least 1".into());
        }
        if let Err(message) = self.ephemerals.validate() {
            return bad(message);
        }
        for origin in &self.cors_origins {
            if !valid_origin(origin) {
                return bad(format!(
                    "cors_origins: {origin:?} is neither \"*\" nor an origin like \
                     \"https://app.example.com\" (scheme://host[:port], no path)"
                ));
            }
        }
        Ok(self)
    }
}

/// The longest duration a setting may give, in milliseconds: one day.
pub const MAX_DURATION_MS: u64 = 86_400_000;

fn valid_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else { return false };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        c.merge_file(Path::new("test.toml"), text)?;
        c.validate()
    }

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn file_overrides_and_checks() {
        let c = parse("version = 1\nshards = 8\n[limits]\nmessage_bytes = 100\n").unwrap();
        assert_eq!(c.shards, 8);
        assert_eq!(c.limits.message_bytes, 100);
        assert!(parse("shards = 8\n").is_err(), "version is required");
        assert!(parse("version = 1\nbogus = 1\n").is_err(), "unknown keys are refused");
        assert!(parse("version = 1\nshards = 0\n").is_err());
        assert!(parse("version = 1\n[raft]\nheartbeat_ms = 200\nelection_min_ms = 300\nelection_max_ms = 900\n").is_err());
    }

    #[test]
    fn durations_are_bounded() {
        let huge = "version = 1\n[actors]\nrequest_timeout_ms = 18446744073709551615\n";
        let e = parse(huge).unwrap_err().to_string();
        assert!(e.contains("actors.request_timeout_ms") && e.contains("one day"), "{e}");
        let e = parse("version = 1\n[raft]\nheartbeat_ms = 9223372036854775807\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("raft.heartbeat_ms"), "{e}");
        let day = "version = 1\n[actors]\nrequest_timeout_ms = 86400000\n";
        assert!(parse(day).is_ok());
    }

    #[test]
    fn errors_name_the_version_and_the_key() {
        let e = parse("version = 2\n").unwrap_err().to_string();
        assert!(e.contains("unsupported config version 2"), "{e}");
        let e = parse("version = 1\n[actors]\nmax_batch = \"lots\"\n").unwrap_err().to_string();
        assert!(e.contains("max_batch") && e.contains("line 3"), "{e}");
        assert!(parse("version = \"1\"\nshards = 8\n").is_ok());
    }

    #[test]
    fn cors_origins() {
        assert_eq!(Config::default().cors_origins, ["*"]);
        let c = parse("version = 1\ncors_origins = [\"https://app.example.com\", \"http://localhost:3000\"]\n").unwrap();
        assert_eq!(c.cors_origins.len(), 2);
        assert!(parse("version = 1\ncors_origins = []\n").unwrap().cors_origins.is_empty());
        assert!(parse("version = 1\ncors_origins = [\"https://app.example.com/path\"]\n").is_err());
        assert!(parse("version = 1\ncors_origins = [\"app.example.com\"]\n").is_err());
    }

    #[test]
    fn ephemeral_limits() {
        assert_eq!(Config::default().ephemerals, EphemeralLimits::default());
        let c =
            parse("version = 1\n[ephemerals]\nbig_room_participants = 10\nbig_room_burst = 5\n")
                .unwrap();
        assert_eq!(
            c.ephemerals,
            EphemeralLimits {
                big_room_participants: 10,
                big_room_per_second: 20,
                big_room_burst: 5
            }
        );
        assert!(parse("version = 1\n[ephemerals]\nbig_room_per_second = 0\n").is_err());
        assert!(parse("version = 1\n[ephemerals]\nbogus = 1\n").is_err());
    }
}
