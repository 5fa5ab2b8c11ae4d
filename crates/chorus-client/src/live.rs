//! The shape every live object publishes (Amity's `dataStatus` / `loadingStatus`).

/// How far a live object has loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadState {
    /// Waiting for the server; the value (if any) came from the local cache.
    Loading,
    /// The value reflects the server (and the live events since).
    Synced,
    /// The server refused (see the snapshot's `error`); the value is the last one known.
    Error,
}

/// Where the current value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Nothing yet.
    None,
    /// The local store, from an earlier run.
    Cache,
    /// The server.
    Server,
    /// A local change not yet confirmed (an optimistic update).
    Local,
}

/// A live object's state at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot<T> {
    pub state: LoadState,
    pub value: T,
    pub origin: Origin,
    /// Set in [`LoadState::Error`].
    pub error: Option<crate::ClientError>,
}

impl<T: Default> Default for Snapshot<T> {
    fn default() -> Self {
        Snapshot {
            state: LoadState::Loading,
            value: T::default(),
            origin: Origin::None,
            error: None,
        }
    }
}
