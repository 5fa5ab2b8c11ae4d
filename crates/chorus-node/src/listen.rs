//! One listen: backlog from storage, then live messages from the hub, each ordinal once and in
//! order.
//!
//! The task tracks `last`, the last ordinal it handed on. A live message at or below `last`
//! was already delivered from the backlog and is skipped; one above `last + 1` means the hub
//! dropped some (this task lagged), and the gap is read from storage before it goes on. So the
//! switch from backlog to live, and any lag, are seamless.

use std::pin::Pin;
use std::task::{Context, Poll};

use chorus_api::{EventStream, ListenEvent};
use chorus_storage::{Db, reads};
use chorus_types::{ShardId, StreamKey};
use futures_core::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::hub::delivered;
use crate::metrics;

/// Events queued between the listen task and the session.
const QUEUE: usize = 256;
/// Messages read from storage per page.
const PAGE: usize = 500;

struct ListenStream {
    rx: mpsc::Receiver<ListenEvent>,
    /// The task; aborted when the session drops the stream.
    task: JoinHandle<()>,
}

impl Stream for ListenStream {
    type Item = ListenEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ListenEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for ListenStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Listen {
    db: Db,
    shard: ShardId,
    key: StreamKey,
    last: u64,
    tx: mpsc::Sender<ListenEvent>,
}

impl Listen {
    /// Sends stored messages `last+1 ..= upto`. False when the session is gone.
    async fn catch_up(&mut self, upto: u64) -> bool {
        while self.last < upto {
            let (db, shard, key, from) =
                (self.db.clone(), self.shard, self.key.clone(), self.last + 1);
            let page = chorus_storage::error::blocking(move || {
                reads::messages(&db, shard, &key, from, upto, PAGE, false)
            })
            .await;
            let page = match page {
                Ok(p) if !p.is_empty() => p,
                Ok(_) => {
                    // Storage has fewer messages than announced: resync rather than guess.
                    let _ = self.tx.send(ListenEvent::Resync { from: self.last + 1 }).await;
                    return false;
                }
                Err(e) => {
                    tracing::error!(stream = %self.key, error = %e, "listen backlog read failed");
                    let _ = self.tx.send(ListenEvent::Resync { from: self.last + 1 }).await;
                    return false;
                }
            };
            for m in page {
                if m.ordinal != self.last + 1 {
                    let _ = self.tx.send(ListenEvent::Resync { from: self.last + 1 }).await;
                    return false;
                }
                self.last = m.ordinal;
                if self.tx.send(ListenEvent::Message(delivered(m))).await.is_err() {
                    return false;
                }
            }
        }
        true
    }

    async fn current_count(&self) -> Option<u64> {
        let (db, shard, key) = (self.db.clone(), self.shard, self.key.clone());
        chorus_storage::error::blocking(move || reads::stream(&db, shard, &key))
            .await
            .ok()
            .flatten()
            .map(|s| s.message_count)
    }

    async fn run(mut self, upto: u64, mut live: broadcast::Receiver<ListenEvent>) {
        if !self.catch_up(upto).await {
            return;
        }
        loop {
            match live.recv().await {
                Ok(ListenEvent::Message(d)) => {
                    let ordinal = d.record.ordinal;
                    if ordinal <= self.last {
                        continue;
                    }
                    if ordinal > self.last + 1 && !self.catch_up(ordinal - 1).await {
                        return;
                    }
                    if self.tx.send(ListenEvent::Message(d)).await.is_err() {
                        return;
                    }
                    self.last = ordinal;
                }
                Ok(ListenEvent::AccessChanged) => {
                    // In order with the messages, waited for: the edge holds back what
                    // follows until its sessions' access is checked again. (If the broadcast
                    // overflowed first, `Lagged` below stands in for it.)
                    if self.tx.send(ListenEvent::AccessChanged).await.is_err() {
                        return;
                    }
                }
                Ok(other) => {
                    // Ephemerals are best effort: dropped rather than waited for.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = self.tx.try_send(other) {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    metrics::LISTEN_CATCHUPS.inc();
                    // The events skipped may have held an access notice: the listener checks
                    // again before the messages read back from storage.
                    if self.tx.send(ListenEvent::AccessChanged).await.is_err() {
                        return;
                    }
                    let Some(count) = self.current_count().await else { return };
                    if !self.catch_up(count).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

struct ListenGauge;

impl Drop for ListenGauge {
    fn drop(&mut self) {
        metrics::LISTENS.dec();
    }
}

/// Starts delivering messages after `last` (backlog up to `upto`, then live).
pub fn start(
    db: Db,
    shard: ShardId,
    key: StreamKey,
    last: u64,
    upto: u64,
    live: broadcast::Receiver<ListenEvent>,
) -> EventStream {
    let (tx, rx) = mpsc::channel(QUEUE);
    metrics::LISTENS.inc();
    let listen = Listen { db, shard, key, last, tx };
    // Made before the spawn, so an abort before the first poll still drops it.
    let gauge = ListenGauge;
    let task = tokio::spawn(async move {
        let _gauge = gauge;
        listen.run(upto, live).await;
    });
    Box::pin(ListenStream { rx, task })
}
