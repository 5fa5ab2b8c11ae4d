//! A node as a cluster member: the gRPC services it offers its peers (`Peer` for Raft,
//! `Owner` for forwarded stream operations, `Admin`), and the [`Router`] that the node's own
//! HTTP/WebSocket API calls so each operation runs on the stream's shard leader; and
//! [`RemoteService`], what an edge process (`chorus edge`) calls instead of a local node.

mod admin;
mod call;
mod call_mux;
mod learner;
mod mux;
mod owner;
mod relay;
mod remote;
mod routed;
mod router;
mod subscribe;
mod topology;

use chorus_proto::pb::admin_server::AdminServer;
use chorus_proto::pb::owner_server::OwnerServer;
use chorus_proto::pb::peer_server::PeerServer;
use chorus_raft::grpc::PeerService;
use chorus_raft::grpc::peers::MAX_MESSAGE;
use tokio::net::TcpListener;

pub use call::{OwnerCall, OwnerReply};
pub use remote::RemoteService;
pub use router::Router;

use crate::error::NodeError;
use crate::node::Node;

/// Accepted connections with Nagle off. The builder's `tcp_nodelay` covers only listeners
/// tonic binds itself; without this, small replies (Raft acks, forwarded posts) wait for the
/// peer's delayed ACK, some 40 ms.
fn incoming(
    listener: TcpListener,
) -> impl futures_core::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures_util::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        if let Err(e) = conn.set_nodelay(true) {
            tracing::debug!(error = %e, "could not disable Nagle on a peer connection");
        }
        Ok(conn)
    })
}

/// Serves `Peer`, `Owner` and `Admin` on `listener` until `shutdown` resolves.
pub async fn serve(
    node: Node,
    router: std::sync::Arc<Router>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let liveness = node.inner.pool.as_ref().map(|p| p.liveness().clone());
    let peer = PeerServer::new(PeerService::new(node.node_id(), node.group_table(), liveness))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let owner = OwnerServer::new(owner::OwnerService::new(node.clone(), router))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let admin = AdminServer::new(admin::AdminService::new(node));
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // A caller that vanished without closing (a crashed edge, a cut link) would otherwise
        // keep its `Owner.Calls` / `Owner.Subscribe` streams and their tasks until TCP gives up.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
        .add_service(peer)
        .add_service(owner)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .map_err(|e| NodeError::Serve(e.to_string()))
}
