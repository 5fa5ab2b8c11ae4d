//! The stable map from a stream to its shard.
//!
//! FNV-1a 64 over `publisherId 0x00 name`, reduced mod `S`. It is spelled out here rather than
//! taken from a hashing crate because it is part of the on-disk format: a different hash after
//! an upgrade would move streams away from their data.

use crate::ids::{ShardId, StreamKey};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The shard of a stream among `shard_count` shards (`shard_count` ≥ 1).
pub fn shard_of(key: &StreamKey, shard_count: u16) -> ShardId {
    let h = fnv1a(FNV_OFFSET, key.publisher_id.as_str().as_bytes());
    let h = fnv1a(h, &[0]);
    let h = fnv1a(h, key.name.as_str().as_bytes());
    let count = u64::from(shard_count.max(1));
    // The remainder is < shard_count ≤ u16::MAX, so the cast cannot truncate.
    ShardId((h % count) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{PublisherId, StreamName};

    fn key(p: &str, n: &str) -> StreamKey {
        StreamKey::new(PublisherId::new(p).unwrap(), StreamName::new(n).unwrap())
    }

    /// Pinned values: changing the hash would orphan every stream's data.
    #[test]
    fn hash_is_stable() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        let s = shard_of(&key("alice", "Chat/room/42"), 64);
        assert_eq!(s, shard_of(&key("alice", "Chat/room/42"), 64));
        assert!(s.0 < 64);
    }

    #[test]
    fn spreads_over_shards() {
        let mut seen = [0u32; 64];
        for i in 0..6400 {
            seen[usize::from(shard_of(&key("u", &format!("room/{i}")), 64).0)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }
}
