//! `chorus-client`: the offline-first Rust SDK for Chorus, in the style of the Amity/Upstra
//! chat SDK and the Qbix Streams client (DESIGN.md §1 "Client SDK").
//!
//! Methods answer at once and keep working without a network: live objects show the local
//! cache first and the server's value when it arrives; posts go to a persisted offline queue
//! and reconcile with the server's ordinal later, exactly once thanks to `clientMsgId`. Apps,
//! bots, the `chorus` CLI and the end-to-end tests all use Chorus through it, over the one
//! WebSocket of `docs/protocol.md`. It depends on no server crate except `chorus-types` (ids
//! and error codes).
//!
//! ```no_run
//! use chorus_client::{Client, NewMessage, StreamId, SyncState};
//!
//! # async fn chat(token: String) -> Result<(), chorus_client::ClientError> {
//! let client = Client::builder("http://127.0.0.1:8080", token)
//!     .store_path("chat.redb") // queue and cache survive restarts
//!     .build()?;
//! let room = StreamId::new("alice", "Chat/room/1");
//!
//! // Returns at once; shows the cached page, then the server's, then live messages.
//! let messages = client.messages(&room);
//! let mut changes = messages.watch();
//!
//! // Queued durably before this returns; sent when connected.
//! let mut post = client.post(&room, NewMessage::new("Chat/message", "hello")).await?;
//! if let SyncState::Synced(message) = post.settled().await.state {
//!     println!("stored as #{}", message.ordinal);
//! }
//! changes.changed().await.ok();
//! for message in &messages.get().value.messages {
//!     println!("#{} {}: {}", message.ordinal, message.by_user_id, message.content);
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`client`]: [`Client`] and [`ClientBuilder`] (URL, token or [`TokenProvider`], store,
//!   backoff, conflict resolver).
//! - `connection`: the WebSocket task: reconnect with jittered backoff (1 s doubling to 8 s,
//!   reset on success), request/reply correlation, event routing.
//! - `feed`: one `listen` per stream, resumed with `since` = the last ordinal held on every
//!   reconnect; [`MessageFeed`] for in-order consumption with gaps filled from history.
//! - `outbox`: the offline queue ([`PostHandle`], [`LocalMessage`], [`SyncState`]).
//! - [`LiveStream`] (fields, optimistic updates, [`Conflict`] hand-off) and [`LiveMessages`]
//!   (paged, live collection), both publishing a [`Snapshot`] with a [`LoadState`].
//! - `store`: redb tables for the queue and the cache of streams and recent messages.
//!
//! # Decisions
//! - Posts are sent one at a time in queue order. The server keeps a session's pipelined
//!   requests on one stream in send order, but a post that fails transiently is sent again as
//!   a new request, which would land behind the posts sent after it; per-stream order is the
//!   promise.
//! - Transient refusals (`rate_limited`, `not_leader`, `unavailable`, `timeout`) and lost
//!   connections are retried; every other code is final for that request (`internal`
//!   included: a retry loop against a server bug helps nobody).
//! - Field updates are not persisted in the queue: they carry a precondition
//!   (`ifMessageCount`) that a restart would make stale anyway; they wait for the connection
//!   and resolve conflicts through the app's [`ConflictResolver`] (default [`TakeTheirs`]).
//! - Ephemerals are not surfaced yet.

mod backoff;
pub mod client;
mod conflict;
mod connection;
mod error;
mod feed;
mod live;
mod live_messages;
mod live_stream;
mod model;
mod outbox;
mod shared;
mod store;
mod token;
mod util;

pub use backoff::BackoffPolicy;
pub use chorus_types::{ApiError, ErrorCode};
pub use client::{Client, ClientBuilder};
pub use conflict::{Conflict, ConflictResolver, Resolution, TakeTheirs};
pub use connection::{ConnectFailure, ConnectionState};
pub use error::{ClientError, ServerError, TokenError};
pub use feed::MessageFeed;
pub use live::{LoadState, Origin, Snapshot};
pub use live_messages::{LiveMessages, MessagesSnapshot, MessagesView};
pub use live_stream::{LiveStream, StreamSnapshot, UpdateOutcome};
pub use model::{Message, NewMessage, Stream, StreamId, StreamUpdate};
pub use outbox::{LocalMessage, PostHandle, SyncState};
pub use token::{StaticToken, TokenFuture, TokenProvider};
