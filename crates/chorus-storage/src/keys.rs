//! Key encodings. Every key begins with the shard id (big-endian `u16`), so one shard's data
//! is one contiguous range in every column family: a snapshot is a range export, and dropping
//! a shard is a range delete.
//!
//! A stream's prefix is `shard ‖ publisherId ‖ 0x00 ‖ name ‖ 0x00`; ids and names cannot
//! contain NUL (ids are `[A-Za-z0-9_.@:-]`, names exclude control characters), so prefixes of
//! different streams never nest.

use chorus_types::{ClientMsgId, ParticipantState, ShardId, StreamKey, UserId};

pub fn shard_prefix(shard: ShardId) -> [u8; 2] {
    shard.0.to_be_bytes()
}

/// `[shard, shard + 1)` as a key range (the end is exclusive; shard `u16::MAX` ends at
/// `[0xff, 0xff, 0xff]`).
pub fn shard_range(shard: ShardId) -> (Vec<u8>, Vec<u8>) {
    let start = shard_prefix(shard).to_vec();
    let end = match shard.0.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff, 0xff, 0xff],
    };
    (start, end)
}

pub fn stream_prefix(shard: ShardId, key: &StreamKey) -> Vec<u8> {
    let p = key.publisher_id.as_str().as_bytes();
    let n = key.name.as_str().as_bytes();
    let mut k = Vec::with_capacity(2 + p.len() + n.len() + 2 + 8);
    k.extend_from_slice(&shard_prefix(shard));
    k.extend_from_slice(p);
    k.push(0);
    k.extend_from_slice(n);
    k.push(0);
    k
}

pub fn message(shard: ShardId, key: &StreamKey, ordinal: u64) -> Vec<u8> {
    let mut k = stream_prefix(shard, key);
    k.extend_from_slice(&ordinal.to_be_bytes());
    k
}

pub fn participant(shard: ShardId, key: &StreamKey, user: &UserId) -> Vec<u8> {
    let mut k = stream_prefix(shard, key);
    k.extend_from_slice(user.as_str().as_bytes());
    k
}

/// The participant index: `stream ‖ state tag ‖ userId`, so a listing by state is a range.
pub fn participant_index_prefix(
    shard: ShardId,
    key: &StreamKey,
    state: ParticipantState,
) -> Vec<u8> {
    let mut k = stream_prefix(shard, key);
    k.push(state.tag());
    k
}

pub fn participant_index(
    shard: ShardId,
    key: &StreamKey,
    state: ParticipantState,
    user: &UserId,
) -> Vec<u8> {
    let mut k = participant_index_prefix(shard, key, state);
    k.extend_from_slice(user.as_str().as_bytes());
    k
}

/// `stream ‖ poster ‖ 0x00 ‖ clientMsgId`: ids are per poster (user ids cannot hold NUL).
pub fn dedupe(shard: ShardId, key: &StreamKey, by: &str, id: &ClientMsgId) -> Vec<u8> {
    let mut k = stream_prefix(shard, key);
    k.extend_from_slice(by.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

pub fn log_entry(shard: ShardId, index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(&shard_prefix(shard));
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

pub fn log_index_of(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(2..10)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Per-shard Raft metadata keys in `raft_meta`.
pub fn raft_meta(shard: ShardId, what: RaftMeta) -> Vec<u8> {
    let mut k = shard_prefix(shard).to_vec();
    k.extend_from_slice(what.as_bytes());
    k
}

#[derive(Copy, Clone, Debug)]
pub enum RaftMeta {
    Vote,
    LastPurged,
    /// `(last applied log id, membership)`, written with each applied batch.
    Applied,
    /// The current snapshot's metadata and file name.
    Snapshot,
}

impl RaftMeta {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            RaftMeta::Vote => b"vote",
            RaftMeta::LastPurged => b"purged",
            RaftMeta::Applied => b"applied",
            RaftMeta::Snapshot => b"snapshot",
        }
    }
}

#[cfg(test)]
mod tests {
    use chorus_types::{PublisherId, StreamName};

    use super::*;

    #[test]
    fn message_keys_sort_by_ordinal_within_a_stream() {
        let k = StreamKey::new(PublisherId::new("a").unwrap(), StreamName::new("r").unwrap());
        let s = ShardId(3);
        assert!(message(s, &k, 2) < message(s, &k, 10));
        assert!(message(s, &k, 255) < message(s, &k, 256));
        let other = StreamKey::new(PublisherId::new("a").unwrap(), StreamName::new("r2").unwrap());
        assert!(!message(s, &other, 1).starts_with(&stream_prefix(s, &k)));
        let (lo, hi) = shard_range(s);
        assert!(lo <= message(s, &k, 1) && message(s, &k, u64::MAX) < hi);
        assert_eq!(log_index_of(&log_entry(s, 77)), Some(77));
    }
}
