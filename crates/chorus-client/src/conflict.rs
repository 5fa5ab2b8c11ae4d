//! Conflict hand-off: what happens when an optimistic field update meets a stream that moved
//! on (the server answered 409 `conflict` to its `ifMessageCount`).

use crate::model::{Stream, StreamId, StreamUpdate};

/// An update whose base is stale.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    pub stream: StreamId,
    /// The changes the app made.
    pub mine: StreamUpdate,
    /// The stream as the app saw it when it made them.
    pub base: Stream,
    /// The stream as the server has it now.
    pub theirs: Stream,
}

/// The app's decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// Send my changes again, on top of theirs.
    KeepMine,
    /// Drop my changes; show theirs.
    TakeTheirs,
    /// Send these changes instead (e.g. a field-by-field merge), on top of theirs.
    Merge(StreamUpdate),
}

/// Decides conflicts. Called on the task that runs the update; keep it quick (ask the user
/// elsewhere and call `update` again if needed).
///
/// Closures work: `.on_conflict(|conflict: &Conflict| Resolution::KeepMine)`.
pub trait ConflictResolver: Send + Sync + 'static {
    fn resolve(&self, conflict: &Conflict) -> Resolution;
}

impl<F> ConflictResolver for F
where
    F: Fn(&Conflict) -> Resolution + Send + Sync + 'static,
{
    fn resolve(&self, conflict: &Conflict) -> Resolution {
        self(conflict)
    }
}

/// The default: someone else's change wins, the app's is dropped. Silently overwriting a
/// change the user never saw is the one outcome a client must not choose for the app.
#[derive(Clone, Copy, Debug, Default)]
pub struct TakeTheirs;

impl ConflictResolver for TakeTheirs {
    fn resolve(&self, _conflict: &Conflict) -> Resolution {
        Resolution::TakeTheirs
    }
}
