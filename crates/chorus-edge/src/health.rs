//! Unauthenticated operator endpoints: `/healthz` (alive), `/readyz` (the service can serve)
//! and `/metrics` (Prometheus text of the default registry).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chorus_types::ApiError;
use prometheus::{Encoder, TextEncoder};
use serde_json::json;

use crate::error::ErrorReply;
use crate::state::EdgeState;

pub(crate) fn routes() -> Router<Arc<EdgeState>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(edge): State<Arc<EdgeState>>) -> Response {
    match edge.service.readiness().await {
        Ok(()) => Json(json!({"status": "ok"})).into_response(),
        // Not ready is 503 whatever the code says, so load balancers read it the same way.
        Err(error) => {
            ErrorReply::from(error).into_response_with_status(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

async fn metrics() -> Response {
    // Scrape-time collectors read RocksDB properties and /proc: blocking calls, kept off the
    // async workers.
    let families = match tokio::task::spawn_blocking(prometheus::gather).await {
        Ok(families) => families,
        Err(error) => {
            tracing::warn!(%error, "metrics gathering failed");
            return ErrorReply::from(ApiError::internal("metrics gathering failed"))
                .into_response();
        }
    };
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    if let Err(error) = encoder.encode(&families, &mut buffer) {
        tracing::warn!(%error, "metrics encoding failed");
        return ErrorReply::from(ApiError::internal("metrics encoding failed")).into_response();
    }
    ([(CONTENT_TYPE, encoder.format_type().to_owned())], buffer).into_response()
}
