//! The registry of running stream actors.
//!
//! Every send happens under the registry lock, and an idle actor removes itself under the same
//! lock only after checking that its mailbox is empty, so no request is ever sent to an actor
//! that has decided to stop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use chorus_api::ServiceError;
use chorus_types::{ErrorCode, StreamKey};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::actor::{ActorRequest, StreamActor};
use crate::error::err;
use crate::node::{ActorSettings, Inner};

pub struct ActorRegistry {
    settings: ActorSettings,
    /// Mailboxes of running actors.
    mailboxes: Mutex<HashMap<StreamKey, mpsc::Sender<ActorRequest>>>,
    /// The actor tasks; joined at shutdown, reaped as they finish.
    tasks: Mutex<JoinSet<()>>,
}

impl ActorRegistry {
    pub fn new(settings: ActorSettings) -> Self {
        ActorRegistry { settings, mailboxes: Mutex::default(), tasks: Mutex::default() }
    }

    pub fn settings(&self) -> &ActorSettings {
        &self.settings
    }

    /// Queues `req` for the stream's actor, starting the actor if needed. A full mailbox is
    /// `unavailable` (retry later), never an unbounded queue.
    pub fn send(
        &self,
        node: &Arc<Inner>,
        key: &StreamKey,
        req: ActorRequest,
    ) -> Result<(), ServiceError> {
        let mut mailboxes = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
        let tx = match mailboxes.get(key) {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(self.settings.mailbox);
                let actor = StreamActor::new(Arc::downgrade(node), key.clone(), rx);
                let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
                while tasks.try_join_next().is_some() {}
                // A root span: the actor outlives the request that started it.
                let span = tracing::info_span!(
                    parent: None,
                    "stream_actor",
                    node = node.config.node_id,
                    shard = chorus_types::shard::shard_of(key, node.shard_count).0,
                    stream = %key,
                );
                tasks.spawn(actor.run().instrument(span));
                mailboxes.insert(key.clone(), tx.clone());
                tx
            }
        };
        tx.try_send(req).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                err(ErrorCode::Unavailable, "stream is overloaded, retry later")
            }
            mpsc::error::TrySendError::Closed(_) => {
                err(ErrorCode::Unavailable, "stream actor stopped")
            }
        })
    }

    /// Called by an idle actor: removes its mailbox if nothing is queued. Returns false (keep
    /// running) when a request arrived meanwhile.
    pub fn retire(&self, key: &StreamKey, rx: &mut mpsc::Receiver<ActorRequest>) -> bool {
        let mut mailboxes = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
        if !rx.is_empty() {
            return false;
        }
        mailboxes.remove(key);
        rx.close();
        true
    }

    /// Closes every mailbox and waits for the actors to finish their queued work.
    pub async fn shutdown(&self) {
        self.mailboxes.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        while tasks.join_next().await.is_some() {}
    }
}

/// The node as an actor holds it: weak, so actors never keep a stopped node alive.
pub type NodeRef = Weak<Inner>;
