//! Raft between nodes over gRPC (`proto/chorus/v1/peer.proto`): the client side
//! ([`network::GrpcNetwork`] on [`peers::PeerPool`]) and the server side
//! ([`service::PeerService`] routing to a [`service::GroupTable`]), plus node liveness
//! ([`liveness`]) and the hibernation of idle groups it allows ([`hibernate`]).

mod batch_mux;
pub mod hibernate;
pub mod liveness;
pub mod network;
pub mod peers;
pub mod service;

pub use network::GrpcNetwork;
pub use peers::{PeerConn, PeerError, PeerPool};
pub use service::{GroupTable, PeerService};
