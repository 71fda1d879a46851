//! Serving a node on a real TCP listener until shutdown.

use std::future::Future;
use std::sync::Arc;

use seedkv_proto::Node;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// Serves `node`'s services on `listener` until `shutdown` resolves; in-flight requests are
/// allowed to finish.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    node.router()
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
