//! What every handler shares: the service, the authenticator and the bounds from the config.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chorus_api::{SESSION_ID_BITS, StreamService};

use crate::auth::Authenticator;
use crate::config::EdgeConfig;
use crate::fanout::Fanout;

/// The router's state, behind one `Arc`.
pub(crate) struct EdgeState {
    pub(crate) service: Arc<dyn StreamService>,
    /// One upstream listen per stream, shared by the sessions listening to it.
    pub(crate) fanout: Arc<Fanout>,
    pub(crate) auth: Authenticator,
    pub(crate) max_body_bytes: usize,
    pub(crate) session_queue_len: usize,
    /// Source of WebSocket session ids. It starts at a random point so that ids of sessions on
    /// different edges are unlikely to collide: the service compares them with an ephemeral's
    /// origin to skip its sender.
    next_session_id: AtomicU64,
}

impl EdgeState {
    pub(crate) fn new(service: Arc<dyn StreamService>, config: &EdgeConfig) -> Self {
        EdgeState {
            fanout: Fanout::new(Arc::clone(&service), config.feed_ring_len, config.listen_timeout),
            service,
            auth: Authenticator::new(&config.jwt_secret, &config.api_key),
            max_body_bytes: config.max_body_bytes,
            // A zero-length queue cannot hold even the reply to a request.
            session_queue_len: config.session_queue_len.max(1),
            next_session_id: AtomicU64::new(random_start()),
        }
    }

    pub(crate) fn next_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// A per-process random start (std's hasher keys are randomly seeded) below 2^39: session
/// ids are compared on their low [`SESSION_ID_BITS`] bits cluster-wide (nodes put their id
/// above them when forwarding), and this leaves room to count up without leaving that range.
fn random_start() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    hasher.finish() >> (64 - (SESSION_ID_BITS - 1))
}
