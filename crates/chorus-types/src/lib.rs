//! Chorus's vocabulary: identifiers, access levels, the closed error-code list, times and the
//! records every other crate passes around.
//!
//! This crate is pure: no tokio, no RocksDB, no network. Everything above it (the domain state
//! machine in `chorus-streams`, storage, raft, node, edge) speaks in these types, so a value
//! means the same thing on every hop.
//!
//! # Layout
//! - [`ids`]: validated newtypes for publisher, user, stream name and type, shard and node ids,
//!   and [`StreamKey`], the identity of a stream.
//! - [`levels`]: the numeric read / write / admin levels (part of the API).
//! - [`error`]: [`ErrorCode`], the one list shared by HTTP, WebSocket and gRPC, and
//!   [`ApiError`], its wire shape.
//! - [`time`]: [`Millis`], wall-clock milliseconds carried inside Raft entries, and RFC 3339.
//! - [`records`]: stream, message, participant and access-row records as stored and replicated.
//! - [`shard`]: the stable `(publisherId, name) -> shard` hash.

pub mod error;
pub mod ids;
pub mod levels;
pub mod object_only;
pub mod records;
pub mod shard;
pub mod time;

pub use error::{ApiError, ErrorCode};
pub use ids::{
    ClientMsgId, NodeId, PublisherId, ShardId, StreamKey, StreamName, StreamType, UserId,
};
pub use levels::{AdminLevel, Levels, ReadLevel, WriteLevel};
pub use records::{
    AccessRow, AccessSubject, InheritEntry, MessageRecord, ParticipantRecord, ParticipantState,
    StreamRecord,
};
pub use time::Millis;
