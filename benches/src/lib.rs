//! Pieces shared by the benchmark binaries (`loadgen`, `replicated`, `fanout`): child processes
//! and a 3-node cluster, the measuring window and failover bookkeeping, the WebSocket posting
//! client, and a minimal WebSocket client for many receive-only sessions.

pub mod cluster;
pub mod http_post;
pub mod procs;
pub mod stats;
pub mod ws_lite;
pub mod ws_post;
