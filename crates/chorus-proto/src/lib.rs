//! The gRPC contract between Chorus processes (`proto/chorus/v1`), generated at build time
//! without `protoc`.
//!
//! - `Peer`: Raft between storage nodes (used by `chorus-raft`).
//! - `Owner`: stream operations forwarded to the node that leads the stream's shard
//!   (used by `chorus-node`'s router).
//! - `Admin`: cluster status for `chorus admin` and the tests.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("chorus.v1");
}
