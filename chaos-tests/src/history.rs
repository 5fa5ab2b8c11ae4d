//! What the clients did and what they were told: the input of the checker.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged, with the ordinal the server answered.
    Ok(u64),
    /// Refused for good (a 4xx other than the retryable ones): must not have happened…
    /// though the checker only holds it to "at most once", since an earlier attempt whose
    /// answer was lost may have landed.
    Error(String),
    /// Timed out or never answered: may or may not have happened.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Post {
    pub client: usize,
    /// Position in this client's sequence of posts (it sends one at a time).
    pub seq: usize,
    pub stream: usize,
    pub client_msg_id: String,
    /// Sent through the edges (rather than straight to the nodes' own API).
    pub via_edge: bool,
    pub outcome: Outcome,
    /// When it was acknowledged (or given up), in milliseconds since the run started.
    pub end_ms: u64,
}

#[derive(Clone, Debug)]
pub struct Membership {
    pub user: String,
    pub stream: usize,
    pub join: bool,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Message { ordinal: u64, client_msg_id: Option<String>, kind: String },
    Resync { from: u64 },
}

/// Where a client's connection went: a node's own API or a `chorus edge` (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Node(usize),
    Edge(usize),
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Node(n) => write!(f, "node {}", n + 1),
            Via::Edge(e) => write!(f, "edge {}", e + 1),
        }
    }
}

/// One `listen` from `since` on one WebSocket, until it broke or was told to resync.
#[derive(Clone, Debug)]
pub struct ListenSession {
    pub listener: usize,
    pub via: Via,
    pub stream: usize,
    pub since: u64,
    pub events: Vec<Event>,
}

#[derive(Default, Debug)]
pub struct History {
    pub posts: Vec<Post>,
    pub memberships: Vec<Membership>,
    pub sessions: Vec<ListenSession>,
}

/// Shared by the client tasks; the clock starts with the run.
#[derive(Clone)]
pub struct Recorder {
    pub inner: Arc<Mutex<History>>,
    pub t0: Instant,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder { inner: Arc::new(Mutex::new(History::default())), t0: Instant::now() }
    }

    pub fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    pub fn post(&self, p: Post) {
        if let Ok(mut h) = self.inner.lock() {
            h.posts.push(p);
        }
    }

    pub fn membership(&self, m: Membership) {
        if let Ok(mut h) = self.inner.lock() {
            h.memberships.push(m);
        }
    }

    pub fn session(&self, s: ListenSession) {
        if let Ok(mut h) = self.inner.lock() {
            h.sessions.push(s);
        }
    }

    pub fn acked(&self) -> usize {
        self.inner
            .lock()
            .map_or(0, |h| h.posts.iter().filter(|p| matches!(p.outcome, Outcome::Ok(_))).count())
    }

    pub fn take(&self) -> History {
        self.inner.lock().map(|mut h| std::mem::take(&mut *h)).unwrap_or_default()
    }
}
