//! What the binary tells the edge: secrets and per-request / per-session bounds.

/// Default `max_body_bytes`: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Default `session_queue_len`: outbound frames buffered per WebSocket session.
pub const DEFAULT_SESSION_QUEUE_LEN: usize = 1024;

/// Default `feed_ring_len`: recent messages kept per followed stream.
pub const DEFAULT_FEED_RING_LEN: usize = 1024;
pub const DEFAULT_LISTEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Configuration of the client-facing HTTP and WebSocket layer.
#[derive(Clone)]
pub struct EdgeConfig {
    /// HS256 key for user JWTs: the secret's UTF-8 bytes. Empty disables JWT authentication
    /// (every JWT is refused) rather than accepting tokens signed with an empty key.
    pub jwt_secret: String,
    /// The app's API key for server-side calls. Empty disables API-key authentication, so an
    /// empty bearer token can never match it.
    pub api_key: String,
    /// Largest accepted HTTP request body and WebSocket message, in bytes (default 1 MiB).
    /// Larger HTTP bodies get 413 `too_large`; larger WebSocket messages close the session.
    pub max_body_bytes: usize,
    /// Outbound frames buffered per WebSocket session (default 1024). A listen whose next
    /// message finds the queue full ends with a `resync` event instead of growing the queue.
    pub session_queue_len: usize,
    /// Recent messages each followed stream keeps at the edge (default 1024), so sessions
    /// that listen or resume within that distance of the head get their backlog without a
    /// read at the owner.
    pub feed_ring_len: usize,
    /// Origins allowed to call the HTTP API from a browser (CORS): `"*"` for any, else exact
    /// origins; empty sends no CORS headers. Default any (tokens are bearer headers, not
    /// cookies, so no page gains what its user's token does not allow).
    pub cors_origins: Vec<String>,
    /// How long a WebSocket `listen` may take from its frame to its `ok` before it answers
    /// `unavailable` (default 15 s): longer than the edge's budget for one call to the nodes,
    /// so that the stream's feed can move on to another node first.
    pub listen_timeout: std::time::Duration,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            jwt_secret: String::new(),
            api_key: String::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            session_queue_len: DEFAULT_SESSION_QUEUE_LEN,
            feed_ring_len: DEFAULT_FEED_RING_LEN,
            listen_timeout: DEFAULT_LISTEN_TIMEOUT,
            cors_origins: vec!["*".into()],
        }
    }
}

impl std::fmt::Debug for EdgeConfig {
    // Secrets never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeConfig")
            .field("jwt_secret", &"<redacted>")
            .field("api_key", &"<redacted>")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("session_queue_len", &self.session_queue_len)
            .field("feed_ring_len", &self.feed_ring_len)
            .field("cors_origins", &self.cors_origins)
            .finish()
    }
}
