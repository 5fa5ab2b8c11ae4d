//! Read queries the node serves from local state. All are blocking; callers run them on the
//! blocking pool.

use chorus_types::{
    AccessRow, MessageRecord, ParticipantRecord, ParticipantState, ShardId, StreamKey, StreamRecord,
};
use rocksdb::{Direction, IteratorMode, ReadOptions};

use crate::db::{Cf, Db};
use crate::error::{Result, StorageError};
use crate::keys;

pub fn stream(db: &Db, shard: ShardId, key: &StreamKey) -> Result<Option<StreamRecord>> {
    db.get_json(Cf::Streams, &keys::stream_prefix(shard, key), "stream")
}

pub fn access_rows(db: &Db, shard: ShardId, key: &StreamKey) -> Result<Vec<AccessRow>> {
    Ok(db
        .get_json(Cf::Access, &keys::stream_prefix(shard, key), "access rows")?
        .unwrap_or_default())
}

/// Stored bytes one page of messages or participants may hold before it is cut short (it
/// always holds at least one). A page of 1,000 messages at the 64 KiB message limit would be a
/// 65 MB WebSocket frame, past what clients accept by default (1 MiB in python `websockets`,
/// 16 MiB frames in tokio-tungstenite) and past the gRPC limit of a forwarded read. The wire
/// form adds some tens of bytes per record, so a full page stays under 1 MiB. Ordinary pages
/// (1,000 posts of a few hundred bytes) are not cut. Clients page on from the last ordinal (or
/// `next`), as they do anyway.
pub const PAGE_BYTES: usize = 768 * 1024;

/// Messages with ordinals in `[min, max]`: the first `limit` ascending, or the last `limit`
/// descending, cut short at [`PAGE_BYTES`].
pub fn messages(
    db: &Db,
    shard: ShardId,
    key: &StreamKey,
    min: u64,
    max: u64,
    limit: usize,
    descending: bool,
) -> Result<Vec<MessageRecord>> {
    messages_within(db, shard, key, (min, max), limit, descending, PAGE_BYTES)
}

/// [`messages`] with its own byte budget: `usize::MAX` reads the whole range (the admin read
/// that compares replicas).
pub fn messages_within(
    db: &Db,
    shard: ShardId,
    key: &StreamKey,
    (min, max): (u64, u64),
    limit: usize,
    descending: bool,
    max_bytes: usize,
) -> Result<Vec<MessageRecord>> {
    if min > max || limit == 0 {
        return Ok(Vec::new());
    }
    let cf = db.cf(Cf::Messages)?;
    let lower = keys::message(shard, key, min);
    let mut ro = ReadOptions::default();
    ro.set_iterate_lower_bound(lower.clone());
    match max.checked_add(1) {
        Some(end) => ro.set_iterate_upper_bound(keys::message(shard, key, end)),
        None => {
            let mut upper = keys::stream_prefix(shard, key);
            upper.extend_from_slice(&[0xff; 9]);
            ro.set_iterate_upper_bound(upper);
        }
    }
    let mode =
        if descending { IteratorMode::End } else { IteratorMode::From(&lower, Direction::Forward) };
    let mut out = Vec::with_capacity(limit.min(1024));
    let mut bytes = 0;
    for item in db.raw().iterator_cf_opt(cf, ro, mode) {
        let (_, v) = item?;
        bytes += v.len();
        if bytes > max_bytes && !out.is_empty() {
            break;
        }
        out.push(serde_json::from_slice(&v).map_err(StorageError::corrupt("message"))?);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// Participants in `state`, ordered by user id, after the cursor `after` (a user id), at most
/// `limit` and cut short at [`PAGE_BYTES`] (with `next` set).
pub fn participants(
    db: &Db,
    shard: ShardId,
    key: &StreamKey,
    state: ParticipantState,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<ParticipantRecord>, Option<String>)> {
    let cf = db.cf(Cf::ParticipantIndex)?;
    let prefix = keys::participant_index_prefix(shard, key, state);
    let mut start = prefix.clone();
    if let Some(a) = after {
        start.extend_from_slice(a.as_bytes());
        // Strictly after the cursor: the smallest key greater than `prefix ‖ after`.
        start.push(0);
    }
    let mut upper = prefix.clone();
    upper.push(0xff);
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(upper);
    let mut out: Vec<ParticipantRecord> = Vec::with_capacity(limit.min(1024));
    let mut more = false;
    let mut bytes = 0;
    for item in db.raw().iterator_cf_opt(cf, ro, IteratorMode::From(&start, Direction::Forward)) {
        let (_, v) = item?;
        bytes += v.len();
        if out.len() == limit || (bytes > PAGE_BYTES && !out.is_empty()) {
            more = true;
            break;
        }
        out.push(serde_json::from_slice(&v).map_err(StorageError::corrupt("participant"))?);
    }
    let next = if more { out.last().map(|p| p.user_id.as_str().to_owned()) } else { None };
    Ok((out, next))
}
