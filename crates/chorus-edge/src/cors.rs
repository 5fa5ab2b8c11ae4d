//! CORS for browser pages of other origins calling the HTTP API.
//!
//! Requests authenticate with a bearer token in `Authorization`, never with a cookie, so no
//! credentials are allowed and any origin may be (the default): a page can do only what the
//! token its user holds allows. Deployments that want to name their app's origins list them
//! (`cors_origins`); an empty list sends no CORS headers. Preflights are answered here, before
//! routing; the WebSocket is not subject to CORS.

use std::time::Duration;

use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may cache a preflight's answer.
const MAX_AGE: Duration = Duration::from_secs(600);

pub(crate) fn layer(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Origins were validated with the config; one that is not a header value matches
        // nothing.
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            AUTHORIZATION,
            CONTENT_TYPE,
            HeaderName::from_static(crate::auth::AS_USER_HEADER),
        ])
        .expose_headers([RETRY_AFTER])
        .max_age(MAX_AGE)
}
