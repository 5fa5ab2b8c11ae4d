//! Pieces shared by the benchmark binaries (`loadgen`, `replicated`): the measuring window and
//! failover bookkeeping, and the WebSocket posting client.

pub mod stats;
pub mod ws_post;
