//! The client-facing edge of Chorus: HTTP and WebSocket on axum, in front of a
//! [`StreamService`].
//!
//! Clients talk to an edge; the edge authenticates them (a user's HS256 JWT, or the app's API
//! key with an optional `X-Chorus-As-User`), parses each request strictly into the request
//! types of `chorus-api`, calls the service and renders its reply or error in the wire shapes
//! of DESIGN.md §3. It holds no durable state and never knows where a stream lives: the
//! binary passes in the service (local shards in dev mode, a gRPC client in a cluster).
//!
//! ```text
//!  HTTP /v1/… ──▶ extract (auth, path, body, query) ─┐
//!                                                    ├─▶ ops::dispatch ─▶ StreamService
//!  WS /v1/ws ──▶ session reader ─▶ frame::parse ─────┘
//!                  listen ─▶ authorize ─▶ fanout feed (one StreamService::listen per
//!                            stream, shared) ─▶ each session's bounded queue ─▶ writer
//! ```
//!
//! # Layout
//! - `config`: [`EdgeConfig`].
//! - `auth`: bearer tokens to a `Principal`.
//! - `extract`: axum extractors whose rejections are JSON errors (`invalid_argument`,
//!   `too_large`, `unauthenticated`).
//! - `ops`: the operations both transports share and their reply bodies.
//! - `http`: the `/v1` routes; `health`: `/healthz`, `/readyz`, `/metrics`.
//! - `fanout`: one upstream listen per stream, its ring of recent messages, and the sessions
//!   attached to it.
//! - `ws`: the WebSocket protocol: sessions, frames, listens, the outbound queue.
//! - `error`: the error shape and `Retry-After`.
//! - `metrics`: `chorus_edge_*` Prometheus metrics.
//! - `server`: [`serve`], with a graceful shutdown that also closes WebSocket sessions.

mod auth;
pub mod config;
mod cors;
mod error;
mod extract;
mod fanout;
mod health;
mod http;
mod metrics;
mod ops;
mod server;
mod state;
mod strict;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
pub use chorus_api::StreamService;
pub use config::{DEFAULT_LISTEN_TIMEOUT, EdgeConfig};
pub use server::serve;

use crate::state::EdgeState;

/// The edge's routes: `/healthz`, `/readyz`, `/metrics`, the `/v1` HTTP API and `/v1/ws`.
/// Registers the edge's metrics in the default Prometheus registry.
pub fn router(service: Arc<dyn StreamService>, config: EdgeConfig) -> Router {
    metrics::register();
    let state = Arc::new(EdgeState::new(service, &config));
    Router::new()
        .merge(health::routes())
        .merge(http::routes())
        .route("/v1/ws", get(ws::upgrade))
        // After every route: it applies to the routes present when it is called.
        .method_not_allowed_fallback(http::method_not_allowed)
        .fallback(http::not_found)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::Extension(extract::BodyLimit(config.max_body_bytes)))
        .layer(cors::layer(&config.cors_origins))
        .with_state(state)
}
