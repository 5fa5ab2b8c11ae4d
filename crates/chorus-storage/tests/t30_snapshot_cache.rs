//! The applier keeps stream records in memory; a snapshot install must replace them. A replica
//! whose applier holds its own (older, diverged) record of a stream installs a snapshot, and
//! the next post continues from the snapshot's message count, not the cached one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chorus_storage::raft_types::{Entry, ShardRequest};
use chorus_storage::{Applier, Db, StateMachine};
use chorus_streams::{Command, Envelope, Outcome};
use chorus_types::{Millis, PublisherId, ShardId, StreamKey, StreamName, StreamType};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId};

const SHARD: ShardId = ShardId(3);

fn key() -> StreamKey {
    StreamKey::new(PublisherId::new("alice").unwrap(), StreamName::new("room").unwrap())
}

fn post(i: u64) -> Envelope {
    Envelope {
        time: Millis(10 + i as i64),
        by: "alice".into(),
        command: Command::Post {
            key: key(),
            message_type: StreamType::new("Chat/message").unwrap(),
            content: format!("m{i}"),
            instructions: None,
            client_msg_id: None,
        },
    }
}

fn entry(index: u64, envelopes: Vec<Envelope>) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(ShardRequest::new(envelopes)),
    }
}

async fn machine(dir: &std::path::Path) -> StateMachine {
    let db = Db::open(dir).unwrap();
    let applier = Applier::start(db.clone()).unwrap();
    StateMachine::open(db, SHARD, applier, None).await.unwrap()
}

fn ordinal(outcome: &Outcome) -> u64 {
    match outcome {
        Outcome::Posted { message, .. } => message.ordinal,
        other => panic!("not posted: {other:?}"),
    }
}

#[tokio::test]
async fn installed_snapshot_replaces_cached_stream_records() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    // Replica A: the stream and five posts (messageCount 6), then a snapshot.
    let mut a = machine(da.path()).await;
    let mut envs = vec![common::create("room")];
    envs.extend((0..5).map(post));
    a.apply(vec![entry(1, envs)]).await.unwrap();
    let snapshot = a.get_snapshot_builder().await.build_snapshot().await.unwrap();

    // Replica B: a diverged history of the same stream, so its applier caches messageCount 2.
    let mut b = machine(db.path()).await;
    let r = b.apply(vec![entry(1, vec![common::create("room"), post(100)])]).await.unwrap();
    assert_eq!(ordinal(&r[0].outcomes[1]), 2);

    b.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    let r = b.apply(vec![entry(2, vec![post(6)])]).await.unwrap();
    assert_eq!(ordinal(&r[0].outcomes[0]), 7, "the post continues from the snapshot's count");
}
