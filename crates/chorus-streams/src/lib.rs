//! The stream domain as a pure state machine: `apply(state, entries) -> (outcomes, writes)`.
//!
//! This is the heart of Chorus's determinism. Every replica of a shard feeds the same committed
//! Raft entries through [`apply_batch`] and gets the same writes and the same replies, because
//! nothing here reads a clock, a random source or the network: timestamps and generated names
//! are stamped into the [`Envelope`] by the proposer (the stream actor), and state is read
//! through the [`StateRead`] trait, which the storage crate implements over RocksDB and tests
//! implement over maps.
//!
//! ```text
//!  stream actor ──Envelope──▶ raft log ──committed──▶ apply_batch(reader, envelopes)
//!                                                          │
//!                                          Outcome per envelope (reply to the proposer)
//!                                          Write list (storage turns it into one WriteBatch)
//! ```
//!
//! # Layout
//! - [`command`]: what is replicated ([`Envelope`], [`Command`]) and what comes back ([`Outcome`]).
//! - [`state`]: [`StateRead`], the [`Write`]s apply emits and the [`Overlay`] that lets later
//!   entries of a batch see the writes of earlier ones.
//! - [`apply`]: the transitions.
//! - [`access`]: the access-level calculation (pure; inputs gathered by the node).
//! - [`validate`]: limits and checks done before proposing.
//! - [`template`]: building a new stream from its request and its `<type>/` template.

pub mod access;
pub mod apply;
pub mod command;
pub mod mem;
pub mod state;
pub mod template;
pub mod validate;

#[cfg(test)]
mod apply_tests;

pub use apply::{DEDUPE_WINDOW_MS, apply_batch, apply_entry};
pub use command::{Command, Envelope, FieldChanges, MAX_JOIN_BATCH, Outcome, ParticipantAction};
pub use state::{DedupeRecord, Overlay, StateRead, Write};
