//! Input a route does not take is refused, not ignored (DESIGN.md §3 "Strict requests"): a
//! query string on a route without query parameters, and a body on `GET` / `DELETE`.
//!
//! A client that sends `?limit=5` to a route that has no `limit`, or a body to `DELETE`,
//! believes it asked for something; answering as if it had not hides its mistake. The two
//! routes with query parameters (history and the participant list) check theirs strictly in
//! their own extractor ([`crate::extract::QueryArgs`]).

use axum::extract::Request;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chorus_types::ApiError;

use crate::error::ErrorReply;

pub(crate) async fn refuse_stray_input(request: Request, next: Next) -> Response {
    if let Some(error) = stray_input(&request) {
        return ErrorReply::from(error).into_response();
    }
    next.run(request).await
}

fn stray_input(request: &Request) -> Option<ApiError> {
    if has_malformed_escape(request.uri().path()) {
        // Decoders keep such a `%` literally, so `%zz` and `%25zz` would name the same stream.
        return Some(ApiError::invalid(
            "malformed percent-escape in the path: `%` must be followed by two hex digits",
        ));
    }
    let method = request.method();
    if let Some(query) = request.uri().query()
        && !takes_query(method, request.uri().path())
        && let Some(name) = query
            .split('&')
            .map(|pair| pair.split('=').next().unwrap_or(""))
            .find(|n| !n.is_empty())
    {
        return Some(ApiError::invalid(format!(
            "unknown query parameter `{name}`: this route takes none"
        )));
    }
    if (method == Method::GET || method == Method::DELETE || method == Method::HEAD)
        && has_body(request)
    {
        return Some(ApiError::invalid(format!("{method} takes no request body")));
    }
    None
}

fn has_malformed_escape(path: &str) -> bool {
    let b = path.as_bytes();
    b.iter().enumerate().any(|(i, c)| {
        *c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// `GET` (and `HEAD`, which axum serves with the `GET` handler) of
/// `/v1/streams/{p}/{name}/messages` and `…/participants`. The name is one path segment
/// (its `/` are percent-encoded), so a stream named `messages` is told apart by the count.
fn takes_query(method: &Method, path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    (method == Method::GET || method == Method::HEAD)
        && segments.len() == 5
        && matches!(segments[4], "messages" | "participants")
}

fn has_body(request: &Request) -> bool {
    let headers = request.headers();
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    length.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    fn request(method: Method, uri: &str, body: &'static str) -> Request {
        let mut builder = axum::http::Request::builder().method(method).uri(uri);
        if !body.is_empty() {
            builder = builder.header(header::CONTENT_LENGTH, body.len());
        }
        builder.body(Body::from(body)).unwrap()
    }

    #[test]
    fn queries_only_where_a_route_takes_them() {
        let history = request(Method::GET, "/v1/streams/a/room/messages?limit=5", "");
        assert!(stray_input(&history).is_none());
        let people = request(Method::GET, "/v1/streams/a/room/participants?after=b", "");
        assert!(stray_input(&people).is_none());
        let fetch = request(Method::GET, "/v1/streams/a/room?foo=1", "");
        assert!(stray_input(&fetch).unwrap().message.contains("`foo`"));
        // A stream named `messages`: a fetch, which takes no query.
        let named = request(Method::GET, "/v1/streams/a/messages?limit=1", "");
        assert!(stray_input(&named).is_some());
        let post = request(Method::POST, "/v1/streams/a/room/messages?x=1", "{}");
        assert!(stray_input(&post).is_some());
        let create = request(Method::POST, "/v1/streams?", "{}");
        assert!(stray_input(&create).is_none());
    }

    #[test]
    fn malformed_percent_escapes_in_the_path() {
        for bad in ["/v1/streams/alice/%zz", "/v1/streams/alice/a%", "/v1/streams/alice/a%2"] {
            let e = stray_input(&request(Method::GET, bad, "")).unwrap();
            assert!(e.message.contains("percent-escape"), "{bad}");
        }
        for good in ["/v1/streams/alice/Chat%2Froom", "/v1/streams/alice/%25zz"] {
            assert!(stray_input(&request(Method::GET, good, "")).is_none(), "{good}");
        }
    }

    #[test]
    fn no_body_on_get_or_delete() {
        assert!(stray_input(&request(Method::DELETE, "/v1/streams/a/room", "{\"x\":1}")).is_some());
        assert!(stray_input(&request(Method::DELETE, "/v1/streams/a/room", "")).is_none());
        assert!(stray_input(&request(Method::GET, "/v1/streams/a/room", "{}")).is_some());
    }
}
