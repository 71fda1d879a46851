//! Serving a node on a real TCP listener until shutdown: its gRPC services, the standard
//! `grpc.health.v1` and `grpc.reflection` services, and the HTTP routes of
//! [`crate::gateway`], all on one port (HTTP/1 is accepted beside HTTP/2).
//!
//! A gRPC call for a service or method nobody serves gets gRPC's own `UNIMPLEMENTED`
//! (tonic's fallback), not an HTTP 404; HTTP paths other than the gateway's get the same
//! fallback.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use seedkv_proto::{Client, ClientConfig, Node};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::gateway::{self, DiskProbe, Gateway};
use crate::observe::{self, DiskCollector, Requests};
use crate::RocksDisk;

/// How often the `grpc.health.v1` status is brought up to date.
pub const HEALTH_EVERY_MS: u64 = 1_000;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("service descriptors: {0}")]
    Descriptors(#[from] prost::DecodeError),
}

/// Serves `node` (whose data lives in `disk`) on `listener` until `shutdown` resolves;
/// in-flight requests are allowed to finish.
pub async fn serve(
    node: Arc<Node>,
    disk: Arc<RocksDisk>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let descriptors: [&[u8]; 3] = [
        seedkv_proto::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    ];
    let mut reflection = tonic_reflection::server::Builder::configure();
    for set in descriptors {
        reflection = reflection.register_encoded_file_descriptor_set(set);
    }
    let reflection_v1 = reflection.build_v1()?;
    let mut reflection = tonic_reflection::server::Builder::configure();
    for set in descriptors {
        reflection = reflection.register_encoded_file_descriptor_set(set);
    }
    let reflection_v1alpha = reflection.build_v1alpha()?;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // NOT_SERVING until the first verdict (tonic-health starts the server as SERVING).
    for service in HEALTH_SERVICES {
        reporter
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    let probe = Arc::new(DiskProbe::default());
    let _health_task = AbortOnDrop(tokio::spawn(report_health(
        node.clone(),
        probe.clone(),
        reporter,
    )));

    let mut registry = seedkv_proto::metrics::registry(&node);
    registry.register_collector(Box::new(DiskCollector(disk)));
    let requests = Requests::new(&descriptors, &mut registry)?;
    let gateway = Arc::new(Gateway {
        client: Client::new(ClientConfig::new(vec![node.addr().to_string()])),
        node: node.clone(),
        registry,
        probe,
    });

    let (kv, raft, admin) = node.services();
    let router = Routes::new(kv)
        .add_service(raft)
        .add_service(admin)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .into_axum_router()
        .merge(gateway::routes(gateway))
        .fallback(gateway::fallback)
        .layer(axum::middleware::from_fn_with_state(
            requests,
            observe::observe,
        ));

    // Small gRPC frames must not wait for the peer's delayed ACK (Nagle): without this a
    // linearizable read took ~40 ms.
    let incoming = TcpListenerStream::new(listener).map(|connection| {
        if let Ok(stream) = &connection {
            let _ = stream.set_nodelay(true);
        }
        connection
    });
    let served = tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(Routes::from(router))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    Ok(served?)
}

/// Aborts the task when dropped, however `serve` ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The services `grpc.health.v1` reports on: the whole server (`""`) and seedkv's three.
const HEALTH_SERVICES: [&str; 4] = ["", "seedkv.v1.Kv", "seedkv.v1.Admin", "seedkv.v1.Raft"];

/// Keeps `grpc.health.v1` saying what `/health` says: the whole server (`""`) and each
/// seedkv service are SERVING exactly when the node is healthy.
async fn report_health(
    node: Arc<Node>,
    probe: Arc<DiskProbe>,
    reporter: tonic_health::server::HealthReporter,
) {
    loop {
        let (status, _) = gateway::health_report(&node, &probe).await;
        let serving = if status.is_success() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in HEALTH_SERVICES {
            reporter.set_service_status(service, serving).await;
        }
        tokio::time::sleep(Duration::from_millis(HEALTH_EVERY_MS)).await;
    }
}
