//! The edge's side of `Owner.Subscribe`: one gRPC stream per node carries every listen the
//! edge holds there, each a subscription with its own id.
//!
//! A reader task routes the node's events to each subscription's queue by id. When the stream
//! breaks, every subscription's queue is dropped, so each listen's events end and its feed
//! listens again (through whichever node answers) from the last ordinal it has; the next
//! subscription opens a new stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chorus_api::EventStream;
use chorus_proto::pb;
use chorus_proto::pb::owner_client::OwnerClient;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::owner::ListenItem;
use super::relay::to_event;

/// Items queued per subscription between the reader task and the feed.
const SUBSCRIPTION_QUEUE: usize = 256;

type Routes = Mutex<HashMap<u64, mpsc::Sender<ListenItem>>>;

pub(super) struct Mux {
    requests: mpsc::UnboundedSender<pb::SubscribeRequest>,
    routes: Arc<Routes>,
    next_id: AtomicU64,
    broken: Arc<AtomicBool>,
}

fn lock(routes: &Routes) -> MutexGuard<'_, HashMap<u64, mpsc::Sender<ListenItem>>> {
    routes.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Mux {
    /// Opens the subscription stream to a node. `None` when the node cannot be reached.
    pub(super) async fn open(client: &OwnerClient<Channel>) -> Option<Arc<Mux>> {
        let (requests, rx) = mpsc::unbounded_channel();
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let mut events = match client.clone().subscribe(outbound).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                tracing::debug!(%status, "owner subscribe failed");
                return None;
            }
        };
        let routes: Arc<Routes> = Arc::default();
        let broken = Arc::new(AtomicBool::new(false));
        let (r, b) = (Arc::clone(&routes), Arc::clone(&broken));
        tokio::spawn(async move {
            while let Ok(Some(event)) = events.message().await {
                let Ok(item) = serde_json::from_slice::<ListenItem>(&event.item) else {
                    continue;
                };
                let route = lock(&r).get(&event.id).cloned();
                if let Some(route) = route {
                    // A listen whose feed went away is unsubscribed by its drop guard.
                    let _ = route.send(item).await;
                }
            }
            b.store(true, Ordering::Release);
            // Dropping the routes ends every subscription's events.
            lock(&r).clear();
        });
        Some(Arc::new(Mux { requests, routes, next_id: AtomicU64::new(1), broken }))
    }

    pub(super) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire) || self.requests.is_closed()
    }

    /// Subscribes with a `ListenCall` body: the first item (`Started` or `Failed`) and the
    /// events after it. `None` when the stream broke.
    pub(super) async fn subscribe(
        self: &Arc<Self>,
        listen: Vec<u8>,
    ) -> Option<(ListenItem, EventStream)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(SUBSCRIPTION_QUEUE);
        lock(&self.routes).insert(id, tx);
        let guard = Unsubscribe { mux: Arc::clone(self), id };
        self.requests.send(pb::SubscribeRequest { id, listen }).ok()?;
        let first = rx.recv().await?;
        let events = futures_util::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            loop {
                match rx.recv().await? {
                    ListenItem::Ended => return None,
                    item => {
                        // After a resync the feed drops the events, which unsubscribes.
                        if let Some(ev) = to_event(None, item) {
                            return Some((ev, (rx, guard)));
                        }
                    }
                }
            }
        });
        Some((first, events.boxed()))
    }
}

/// Closes a subscription when its events are dropped.
struct Unsubscribe {
    mux: Arc<Mux>,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        lock(&self.mux.routes).remove(&self.id);
        let _ = self.mux.requests.send(pb::SubscribeRequest { id: self.id, listen: Vec::new() });
    }
}
