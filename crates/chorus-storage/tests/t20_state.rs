//! The RocksDB state gives the same answers and the same bytes as the in-memory reference,
//! and two shards in one database never see each other's data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chorus_storage::rocks_state::{RocksState, write_batch};
use chorus_storage::{Db, reads};
use chorus_streams::mem::MemState;
use chorus_streams::{Command, Envelope, Outcome, ParticipantAction, apply_batch};
use chorus_types::{
    ClientMsgId, Millis, ParticipantState, PublisherId, ShardId, StreamKey, StreamName, StreamType,
    UserId,
};

fn key(name: &str) -> StreamKey {
    StreamKey::new(PublisherId::new("alice").unwrap(), StreamName::new(name).unwrap())
}

fn log() -> Vec<Envelope> {
    let mut log = vec![common::create("a"), common::create("b")];
    for i in 0..200u64 {
        let name = if i % 2 == 0 { "a" } else { "b" };
        let by = format!("u{}", i % 13);
        if i % 5 == 0 {
            log.push(Envelope {
                time: Millis(10 + i as i64),
                by: by.clone(),
                command: Command::Participate {
                    key: key(name),
                    user: UserId::new(&by).unwrap(),
                    action: if i % 3 == 0 {
                        ParticipantAction::Leave
                    } else {
                        ParticipantAction::Join
                    },
                    extra: None,
                    extra_max: None,
                    unseen: false,
                },
            });
        }
        log.push(Envelope {
            time: Millis(10 + i as i64),
            by,
            command: Command::Post {
                key: key(name),
                message_type: StreamType::new("Chat/message").unwrap(),
                content: format!("m{i}"),
                instructions: None,
                client_msg_id: Some(ClientMsgId::new(format!("c{}", i % 50)).unwrap()),
            },
        });
    }
    log
}

fn apply_rocks(db: &Db, shard: ShardId, envs: &[Envelope]) -> Vec<Outcome> {
    let state = RocksState { db, shard };
    let (outcomes, writes) = apply_batch(&state, envs).unwrap();
    let mut batch = rocksdb::WriteBatch::default();
    write_batch(db, shard, &mut batch, &writes).unwrap();
    db.raw().write(batch).unwrap();
    outcomes
}

fn dump(db: &Db) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for cf in chorus_storage::db::Cf::STATE {
        for item in db.raw().iterator_cf(db.cf(cf).unwrap(), rocksdb::IteratorMode::Start) {
            let (k, v) = item.unwrap();
            out.push((cf.name().to_owned(), k.to_vec(), v.to_vec()));
        }
    }
    out
}

/// The same log applied to two databases in different batchings gives byte-identical state,
/// and the same outcomes as the in-memory reference.
#[test]
fn same_log_gives_identical_bytes_and_matches_reference() {
    let log = log();
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let (db1, db2) = (Db::open(d1.path()).unwrap(), Db::open(d2.path()).unwrap());
    let shard = ShardId(3);
    let o1 = apply_rocks(&db1, shard, &log);
    let mut o2 = Vec::new();
    for chunk in log.chunks(7) {
        o2.extend(apply_rocks(&db2, shard, chunk));
    }
    assert_eq!(o1, o2);
    assert_eq!(dump(&db1), dump(&db2));

    let mut mem = MemState::default();
    let (o3, writes) = apply_batch(&mem, &log).unwrap();
    mem.write(writes);
    assert_eq!(o1, o3);
    for name in ["a", "b"] {
        let k = key(name);
        let stored = reads::stream(&db1, shard, &k).unwrap().unwrap();
        assert_eq!(stored, mem.streams[&k]);
        let msgs = reads::messages(&db1, shard, &k, 1, u64::MAX, 10_000, false).unwrap();
        let ords: Vec<u64> = msgs.iter().map(|m| m.ordinal).collect();
        assert_eq!(ords, (1..=stored.message_count).collect::<Vec<_>>(), "gap-free ordinals");
        let (parts, _) =
            reads::participants(&db1, shard, &k, ParticipantState::Participating, None, 1000)
                .unwrap();
        assert_eq!(
            parts.len() as u64,
            stored.participant_count,
            "participantCount matches the index"
        );
    }
}

#[test]
fn history_and_participant_pages() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path()).unwrap();
    let shard = ShardId(1);
    apply_rocks(&db, shard, &log());
    let k = key("a");
    let last3 = reads::messages(&db, shard, &k, 1, u64::MAX, 3, true).unwrap();
    let count = reads::stream(&db, shard, &k).unwrap().unwrap().message_count;
    assert_eq!(
        last3.iter().map(|m| m.ordinal).collect::<Vec<_>>(),
        vec![count, count - 1, count - 2]
    );
    let mid = reads::messages(&db, shard, &k, 5, 9, 100, false).unwrap();
    assert_eq!(mid.iter().map(|m| m.ordinal).collect::<Vec<_>>(), vec![5, 6, 7, 8, 9]);
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (page, next) = reads::participants(
            &db,
            shard,
            &k,
            ParticipantState::Participating,
            after.as_deref(),
            2,
        )
        .unwrap();
        seen.extend(page.into_iter().map(|p| p.user_id.as_str().to_owned()));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "pages are ordered by user id, without repeats");
    assert_eq!(
        seen.len() as u64,
        reads::stream(&db, shard, &k).unwrap().unwrap().participant_count
    );
    // Another shard of the same database sees nothing.
    assert!(reads::stream(&db, ShardId(2), &k).unwrap().is_none());
}

/// A page of big messages stops at `PAGE_BYTES` (a reply frame clients can take), holds at
/// least one message, and paging on from the last ordinal reads every message once.
#[test]
fn history_pages_of_big_messages_are_cut_by_bytes() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path()).unwrap();
    let shard = ShardId(1);
    let mut envs = log();
    envs.push(common::create("big"));
    for i in 0..40 {
        envs.push(Envelope {
            time: Millis(1_000 + i),
            by: "alice".into(),
            command: Command::Post {
                key: key("big"),
                message_type: StreamType::new("Chat/message").unwrap(),
                content: "x".repeat(60_000),
                instructions: None,
                client_msg_id: None,
            },
        });
    }
    apply_rocks(&db, shard, &envs);
    let k = key("big");
    let first = reads::messages(&db, shard, &k, 1, u64::MAX, 1000, false).unwrap();
    let count = reads::stream(&db, shard, &k).unwrap().unwrap().message_count;
    assert!(count >= 40);
    assert!(!first.is_empty() && first.len() < 40, "cut short: {}", first.len());
    let bytes: usize = first.iter().map(|m| serde_json::to_vec(m).unwrap().len()).sum();
    assert!(bytes <= reads::PAGE_BYTES, "{bytes} bytes in a page");
    let mut next = 1;
    let mut seen = Vec::new();
    loop {
        let page = reads::messages(&db, shard, &k, next, u64::MAX, 1000, false).unwrap();
        let Some(last) = page.last() else { break };
        next = last.ordinal + 1;
        seen.extend(page.iter().map(|m| m.ordinal));
    }
    assert_eq!(seen, (1..=count).collect::<Vec<_>>());
    let newest = reads::messages(&db, shard, &k, 1, u64::MAX, 1000, true).unwrap();
    assert_eq!(newest.first().map(|m| m.ordinal), Some(count), "descending starts at the newest");
    assert!(newest.len() < 40);
}
