//! A count of running calls that can be waited on until it reaches zero.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct InFlight {
    running: AtomicUsize,
    idle: Notify,
}

/// One running call; dropping it ends the call.
pub(crate) struct Running<'a>(&'a InFlight);

impl InFlight {
    pub(crate) fn start(&self) -> Running<'_> {
        self.running.fetch_add(1, Ordering::SeqCst);
        Running(self)
    }

    /// Returns once no call is running.
    pub(crate) async fn idle(&self) {
        loop {
            // Registered before the check, so a drop to zero in between is not missed.
            let notified = self.idle.notified();
            if self.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn idle_waits_for_every_running_call() {
        let calls = Arc::new(InFlight::default());
        calls.idle().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let c = Arc::clone(&calls);
        let task = tokio::spawn(async move {
            let _a = c.start();
            let _b = c.start();
            let _ = rx.await;
        });
        tokio::task::yield_now().await;
        while calls.running.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        let waiting = tokio::time::timeout(Duration::from_millis(50), calls.idle()).await;
        assert!(waiting.is_err(), "two calls still run");
        let _ = tx.send(());
        calls.idle().await;
        task.await.unwrap();
    }
}
