//! The one listen a feed holds at the stream's owner, kept open for as long as the feed lives.
//!
//! It listens as the app (each session was authorised on its own) from now, then, whenever
//! the listen ends — the owner connection broke, the owner's node failed over, or the owner
//! fell behind and asked for a resync — listens again with `since` = the last ordinal the
//! feed has. Sessions see a pause, then the next ordinal. Errors that a retry may cure
//! (`unavailable`, `not_leader`, `timeout`) are retried with backoff for as long as sessions
//! listen; any other error fails the feed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_api::{Caller, ListenEvent, Principal, StreamService};
use chorus_types::ErrorCode;
use futures_util::StreamExt;

use super::feed::Feed;
use crate::metrics::{FEED_REOPENS, LISTENS_SHUT_OUT};
use crate::ws::outbound::Kick;

/// Sessions one write task takes (~3 ms of writes): a fan-out to 17,000 sessions runs as
/// many such tasks, spread over the runtime's workers, so one big stream's writes use every
/// core and no worker is held for long.
const WRITES_PER_TASK: usize = 256;
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(2);
/// An upstream listen that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(1);

pub(crate) async fn run(feed: Arc<Feed>, service: Arc<dyn StreamService>) {
    let app = Caller::app();
    let mut since: Option<u64> = None;
    let mut pause = FIRST_PAUSE;
    loop {
        let listening = match service.listen(&app, &feed.key, since).await {
            Ok(listening) => listening,
            Err(e) if e.error.code.is_failover() => {
                tracing::debug!(stream = %feed.key, error = %e.error, "feed upstream retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
                continue;
            }
            Err(e) => {
                tracing::debug!(stream = %feed.key, error = %e.error, "feed upstream refused");
                feed.fail();
                return;
            }
        };
        match since {
            None => feed.opened(listening.message_count),
            Some(_) if !listening.recovered => {
                tracing::warn!(
                    stream = %feed.key,
                    last = feed.last(),
                    count = listening.message_count,
                    "stream has fewer messages than this edge delivered; sessions resync"
                );
                feed.restart_at(listening.message_count);
            }
            Some(_) => {}
        }
        if since.is_some() {
            // Access may have changed while the upstream was down, with no notice to tell:
            // check the listeners before anything the new listen brings.
            recheck(&feed, service.as_ref()).await;
            feed.resumed();
        }
        let opened_at = Instant::now();
        let mut events = listening.events;
        while let Some(event) = events.next().await {
            match event {
                ListenEvent::Message(delivered) => write_all(feed.publish(&delivered)),
                ListenEvent::Ephemeral(relayed) => write_all(feed.relay(&relayed)),
                // Nothing after it goes out before the sessions' access is checked again.
                ListenEvent::AccessChanged => recheck(&feed, service.as_ref()).await,
                // The owner's listen fell behind: listen again from what we have.
                ListenEvent::Resync { .. } => break,
            }
        }
        FEED_REOPENS.inc();
        feed.reopening();
        since = Some(feed.last());
        // A listen that keeps ending at once (an owner shutting down) must not spin.
        if opened_at.elapsed() < STABLE {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        } else {
            pause = FIRST_PAUSE;
        }
    }
}

/// Principals checked in one bulk call: one access context answers them all, and a call
/// stays well under a megabyte.
const RECHECK_BATCH: usize = 2048;
/// Bulk calls in flight at once (a 100,000-listener room is ~50 calls).
const RECHECKS_IN_FLIGHT: usize = 4;
/// A call that takes longer (the owner failing over) keeps its sessions rather than holding
/// the stream's delivery up.
const RECHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a round of checks holds the stream's delivery up.
const RECHECK_ROUND: Duration = Duration::from_secs(10);

/// Checks every listening principal's access to the stream again and detaches the sessions
/// of those who lost it (DESIGN.md §3: `listen` needs read level messages). The upstream waits
/// for this, so messages committed after the change reach only sessions that may read them.
/// Errors that say nothing about access (the owner unreachable) keep the session: it is not
/// shut out on a guess.
async fn recheck(feed: &Feed, service: &dyn StreamService) {
    let principals = feed.access_changed();
    if principals.is_empty() {
        return;
    }
    let started = Instant::now();
    let chunks: Vec<Vec<Principal>> =
        principals.chunks(RECHECK_BATCH).map(<[Principal]>::to_vec).collect();
    let checks = futures_util::stream::iter(chunks).map(|chunk| async move {
        let check = tokio::time::timeout(RECHECK_TIMEOUT, check_chunk(feed, service, &chunk));
        let allowed = check.await.unwrap_or_else(|_| vec![true; chunk.len()]);
        chunk.into_iter().zip(allowed).filter_map(|(p, ok)| (!ok).then_some(p)).collect::<Vec<_>>()
    });
    // One deadline for the whole round, so a big room's delivery is held up for a bounded
    // time even while the owner fails over; principals not checked by then keep listening
    // until their next check.
    let mut shut_out = std::collections::HashSet::new();
    let mut denied = std::pin::pin!(checks.buffer_unordered(RECHECKS_IN_FLIGHT));
    let round = async {
        while let Some(principals) = denied.next().await {
            shut_out.extend(principals);
        }
    };
    if tokio::time::timeout(RECHECK_ROUND, round).await.is_err() {
        tracing::warn!(stream = %feed.key, "access re-check round cut short");
    }
    tracing::debug!(
        stream = %feed.key,
        shut_out = shut_out.len(),
        ms = started.elapsed().as_millis() as u64,
        "listeners checked again after an access change"
    );
    if !shut_out.is_empty() {
        LISTENS_SHUT_OUT.inc_by(shut_out.len() as u64);
        feed.shut_out(&shut_out);
    }
}

/// Whether each of `chunk` may still listen: one bulk call. An owner that does not know the
/// bulk call (a node of an older version during a rolling upgrade) is asked one principal at
/// a time; an error that says nothing about access keeps the principal.
async fn check_chunk(feed: &Feed, service: &dyn StreamService, chunk: &[Principal]) -> Vec<bool> {
    let app = Caller::app();
    match service.authorize_listeners(&app, &feed.key, chunk.to_vec()).await {
        Ok(allowed) if allowed.len() == chunk.len() => return allowed,
        Ok(_) => {}
        Err(e) if !matches!(e.error.code, ErrorCode::Internal | ErrorCode::InvalidArgument) => {
            return vec![true; chunk.len()];
        }
        Err(_) => {}
    }
    let one = |principal: Principal| async move {
        let caller = Caller::new(principal, None);
        match service.authorize_listen(&caller, &feed.key).await {
            Ok(_) => true,
            Err(e) => !refused(e.error.code),
        }
    };
    futures_util::stream::iter(chunk.iter().cloned()).map(one).buffered(32).collect().await
}

/// What `authorize_listen` answers a principal who may not listen.
fn refused(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::NotFound | ErrorCode::Forbidden | ErrorCode::Unauthenticated)
}

/// Writes each session's queued frames: small fan-outs in this task, big ones in tasks of
/// [`WRITES_PER_TASK`] sessions. Order needs no waiting: each session's frames are written
/// in its queue's order by whichever task gets there first.
fn write_all(mut kicks: Vec<Kick>) {
    while kicks.len() > WRITES_PER_TASK {
        let chunk = kicks.split_off(kicks.len() - WRITES_PER_TASK);
        tokio::spawn(async move { chunk.into_iter().for_each(Kick::run) });
    }
    kicks.into_iter().for_each(Kick::run);
}
