//! Reading and writing the meta record through the meta group.
//!
//! The record is the `attributes` of one stream, `chorus`/`Cluster/meta`, in the meta group
//! (group id [`META_GROUP`]). That group is an ordinary Chorus Raft group, so the record is
//! replicated, stored in the node's RocksDB under the group's own key range, snapshotted and
//! caught up exactly like a shard, with no second storage engine. Every change is a
//! compare-and-set: an `Update` with `ifMessageCount` = the version it was computed from
//! (each change posts one `Streams/changed`, which bumps the count), so two writers (an old
//! and a new meta leader) can never overwrite each other's change, and a leader whose
//! replica lags simply retries once it has applied more.

use std::collections::BTreeMap;
use std::time::Duration;

use chorus_storage::{Db, ShardRequest, reads};
use chorus_streams::command::Rejection;
use chorus_streams::{Command, Envelope, FieldChanges, Outcome};
use chorus_types::{Millis, PublisherId, ShardId, StreamKey, StreamName, StreamRecord, StreamType};
use openraft::error::{ClientWriteError, RaftError};

use super::state::{MetaChangeError, MetaState};

/// The meta group's id: no shard uses it (a data dir has at most `u16::MAX` shards, ids
/// `0..u16::MAX`), and the peer service routes it like any group.
pub const META_GROUP: u16 = u16::MAX;

/// How many times a read-modify-write is retried when another change won the race.
const CAS_ATTEMPTS: usize = 50;
const CAS_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("storage: {0}")]
    Storage(#[from] chorus_storage::StorageError),
    #[error("meta record is malformed: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("this node does not lead the meta group (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("the meta group has no record yet")]
    Uninitialised,
    #[error("the meta record kept changing under this update")]
    Contended,
    #[error("the meta group refused the write: {0:?}")]
    Refused(Rejection),
    #[error("the meta group answered a write with something other than the stream")]
    UnexpectedOutcome,
    #[error("meta group: {0}")]
    Raft(Box<RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>>),
    #[error(transparent)]
    Change(#[from] MetaChangeError),
    #[error("meta stream key: {0}")]
    Key(#[from] chorus_types::ApiError),
    #[error("meta group: {0}")]
    Timeout(#[from] crate::quorum::QuorumTimeout),
}

fn meta_key() -> Result<StreamKey, MetaError> {
    Ok(StreamKey::new(PublisherId::new("chorus")?, StreamName::new("Cluster/meta")?))
}

/// The record as this node's replica has applied it, with its version (the stream's
/// `messageCount`).
pub async fn read(db: &Db) -> Result<Option<(u64, MetaState)>, MetaError> {
    let key = meta_key()?;
    let db = db.clone();
    let stream =
        chorus_storage::error::blocking(move || reads::stream(&db, ShardId(META_GROUP), &key))
            .await?;
    let Some(stream) = stream else { return Ok(None) };
    let state: MetaState = serde_json::from_value(stream.attributes)?;
    Ok(Some((stream.message_count, state)))
}

/// Proposes `state` as the successor of `version` (`None`: the first record).
async fn write(
    raft: &chorus_raft::Raft,
    version: Option<u64>,
    state: &MetaState,
) -> Result<WriteResult, MetaError> {
    let key = meta_key()?;
    let attributes = serde_json::to_value(state)?;
    let command = match version {
        None => Command::Create {
            stream: Box::new(StreamRecord {
                publisher_id: key.publisher_id.clone(),
                name: key.name.clone(),
                stream_type: StreamType::new("Cluster/meta")?,
                title: String::new(),
                icon: String::new(),
                content: String::new(),
                attributes,
                read_level: 0,
                write_level: 0,
                admin_level: 0,
                inherit_access: Vec::new(),
                message_count: 0,
                participant_count: 0,
                inserted_time: Millis(0),
                updated_time: Millis(0),
                closed_time: None,
            }),
            access_rows: Vec::new(),
        },
        Some(version) => Command::Update {
            key,
            changes: FieldChanges { attributes: Some(attributes), ..FieldChanges::default() },
            if_message_count: Some(version),
        },
    };
    let envelope = Envelope { time: Millis::now(), by: String::new(), command };
    let reply =
        match crate::quorum::bounded(raft.client_write(ShardRequest::new(vec![envelope]))).await? {
            Ok(reply) => reply,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                return Err(MetaError::NotLeader { leader: f.leader_id });
            }
            Err(e) => return Err(MetaError::Raft(Box::new(e))),
        };
    match reply.data.outcomes.into_iter().next() {
        Some(Outcome::Stream(_)) => Ok(WriteResult::Done),
        Some(Outcome::Rejected {
            reason: Rejection::AlreadyExists | Rejection::MessageCountMismatch,
            ..
        }) => Ok(WriteResult::Conflict),
        Some(Outcome::Rejected { reason, .. }) => Err(MetaError::Refused(reason)),
        _ => Err(MetaError::UnexpectedOutcome),
    }
}

enum WriteResult {
    Done,
    /// Another change got in first: read again and recompute.
    Conflict,
}

/// Writes the first record unless one exists (any node may try; one wins): the meta group's
/// voters hold every shard, which is how a `--peers` cluster starts.
pub async fn bootstrap(db: &Db, raft: &chorus_raft::Raft, shards: u16) -> Result<(), MetaError> {
    if read(db).await?.is_some() {
        return Ok(());
    }
    let membership = raft.metrics().borrow().membership_config.clone();
    let nodes: BTreeMap<u64, String> = membership
        .membership()
        .voter_ids()
        .filter_map(|id| membership.membership().get_node(&id).map(|n| (id, n.addr.clone())))
        .collect();
    let state = MetaState::initial(&nodes, shards);
    match write(raft, None, &state).await? {
        WriteResult::Done => {
            tracing::info!(nodes = ?nodes.keys().collect::<Vec<_>>(), "meta record created");
            Ok(())
        }
        WriteResult::Conflict => Ok(()),
    }
}

/// Read-modify-write on the meta leader: `change` is applied to the current record and the
/// result written if it differs, retried from a fresh read when another change won.
pub async fn update<F>(db: &Db, raft: &chorus_raft::Raft, change: F) -> Result<MetaState, MetaError>
where
    F: Fn(&mut MetaState) -> Result<(), MetaChangeError>,
{
    for _ in 0..CAS_ATTEMPTS {
        let (version, current) = read(db).await?.ok_or(MetaError::Uninitialised)?;
        let mut next = current.clone();
        change(&mut next)?;
        if next == current {
            return Ok(current);
        }
        match write(raft, Some(version), &next).await? {
            WriteResult::Done => return Ok(next),
            WriteResult::Conflict => tokio::time::sleep(CAS_BACKOFF).await,
        }
    }
    Err(MetaError::Contended)
}
