//! The edge's side of `Owner.Subscribe`: one gRPC stream per node carries every listen the
//! edge holds there, each a subscription with its own id.
//!
//! A reader task routes the node's events to each subscription's queue by id. When the stream
//! breaks, every subscription's queue is dropped, so each listen's events end and its feed
//! listens again (through whichever node answers) from the last ordinal it has; the next
//! subscription opens a new stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chorus_api::EventStream;
use chorus_proto::pb;
use chorus_proto::pb::owner_client::OwnerClient;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::owner::ListenItem;
use super::relay::to_event;

/// Items queued per subscription between the reader task and the feed.
const SUBSCRIPTION_QUEUE: usize = 256;

/// Each subscription's queue by id; `None` once the stream broke (no route will be served).
type Routes = Mutex<Option<HashMap<u64, mpsc::Sender<ListenItem>>>>;

pub(super) struct Mux {
    requests: mpsc::UnboundedSender<pb::SubscribeRequest>,
    routes: Arc<Routes>,
    next_id: AtomicU64,
}

fn lock(routes: &Routes) -> MutexGuard<'_, Option<HashMap<u64, mpsc::Sender<ListenItem>>>> {
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
        let routes: Arc<Routes> = Arc::new(Mutex::new(Some(HashMap::new())));
        let r = Arc::clone(&routes);
        // Weak: the reader must not keep the request stream open once the edge lets go.
        let unsubscribe = requests.downgrade();
        tokio::spawn(async move {
            while let Ok(Some(event)) = events.message().await {
                let item = match serde_json::from_slice::<ListenItem>(&event.item) {
                    Ok(item) => item,
                    // Unreadable: end that subscription (its feed listens again) rather than
                    // leave it waiting for an item that will not come.
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable subscription event");
                        drop_route(&r, &unsubscribe, event.id);
                        continue;
                    }
                };
                let route = lock(&r).as_ref().and_then(|m| m.get(&event.id).cloned());
                let Some(route) = route else { continue };
                // Never wait for one subscription: a feed that does not keep up loses its
                // subscription (its events end; it listens again from its last ordinal)
                // instead of holding up every other stream on this node.
                if route.try_send(item).is_err() {
                    drop_route(&r, &unsubscribe, event.id);
                }
            }
            // Dropping the routes ends every subscription's events; none is added after.
            lock(&r).take();
        });
        Some(Arc::new(Mux { requests, routes, next_id: AtomicU64::new(1) }))
    }

    pub(super) fn is_broken(&self) -> bool {
        lock(&self.routes).is_none() || self.requests.is_closed()
    }

    /// Subscribes with a `ListenCall` body: the first item (`Started` or `Failed`) and the
    /// events after it. `None` when the stream broke.
    pub(super) async fn subscribe(
        self: &Arc<Self>,
        listen: Vec<u8>,
        deadline: Instant,
    ) -> Option<(ListenItem, EventStream)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(SUBSCRIPTION_QUEUE);
        // Under the routes lock: a stream that broke a moment ago takes no new route.
        lock(&self.routes).as_mut()?.insert(id, tx);
        let guard = Unsubscribe { mux: Arc::clone(self), id };
        self.requests.send(pb::SubscribeRequest { id, listen }).ok()?;
        let first = tokio::time::timeout_at(deadline, rx.recv()).await.ok()??;
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
        if let Some(routes) = lock(&self.mux.routes).as_mut() {
            routes.remove(&self.id);
        }
        let _ = self.mux.requests.send(pb::SubscribeRequest { id: self.id, listen: Vec::new() });
    }
}

/// Ends subscription `id` here and at the node.
fn drop_route(
    routes: &Routes,
    requests: &mpsc::WeakUnboundedSender<pb::SubscribeRequest>,
    id: u64,
) {
    if let Some(routes) = lock(routes).as_mut() {
        routes.remove(&id);
    }
    if let Some(requests) = requests.upgrade() {
        let _ = requests.send(pb::SubscribeRequest { id, listen: Vec::new() });
    }
}
