//! Where the connection gets its bearer token.

use std::future::Future;
use std::pin::Pin;

use crate::error::TokenError;

/// A token, when it is ready.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send + 'a>>;

/// Supplies the bearer token (a JWT, or the API key for server-side apps).
///
/// Asked before **every** connection attempt, not once: this is the refresh hook. A provider
/// that caches a JWT returns a fresh one when the cached one is near its `exp`; after a
/// refused upgrade (401) the connection retries with backoff and asks again. An error is
/// logged and counts as a failed attempt.
///
/// Closures work: `|| async { Ok::<_, TokenError>(fetch_jwt().await?) }`.
pub trait TokenProvider: Send + Sync + 'static {
    fn token(&self) -> TokenFuture<'_>;
}

/// A fixed token.
#[derive(Clone, Debug)]
pub struct StaticToken(pub String);

impl TokenProvider for StaticToken {
    fn token(&self) -> TokenFuture<'_> {
        let token = self.0.clone();
        Box::pin(async move { Ok(token) })
    }
}

impl<F, Fut> TokenProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
{
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(self())
    }
}
