//! Counting the requests a node serves, gRPC and HTTP alike, for `/metrics`.
//!
//! One axum middleware sees every request on the port: gRPC calls are labelled by method
//! and status code (`grpc-status` in the response headers; a unary call that succeeded
//! carries none there, its OK is in the trailers), HTTP calls by route, verb and status.
//! Label values come from closed sets (the methods in the served descriptors, the
//! gateway's routes), so a client inventing paths cannot grow the registry.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use prost::Message;
use tokio::time::Instant;

use crate::RocksDisk;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcMethod {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    verb: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRoute {
    route: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    Histogram::new(seedkv_core::metrics::latency_buckets())
}

/// The request figures of one node's port.
#[derive(Debug)]
pub struct Requests {
    grpc: Family<GrpcLabels, Counter>,
    grpc_seconds: Histograms<GrpcMethod>,
    http: Family<HttpLabels, Counter>,
    http_seconds: Histograms<HttpRoute>,
    /// Every gRPC path served (`/package.Service/Method`); others count as `unknown`.
    methods: BTreeSet<String>,
}

impl Requests {
    /// Figures for a port serving the services in `descriptor_sets` (encoded
    /// `FileDescriptorSet`s), registered in `registry`.
    pub fn new(
        descriptor_sets: &[&[u8]],
        registry: &mut Registry,
    ) -> Result<Arc<Requests>, prost::DecodeError> {
        let mut methods = BTreeSet::new();
        for encoded in descriptor_sets {
            let set = prost_types::FileDescriptorSet::decode(*encoded)?;
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = service.name.unwrap_or_default();
                    for method in service.method {
                        methods.insert(format!(
                            "/{package}.{service_name}/{}",
                            method.name.unwrap_or_default()
                        ));
                    }
                }
            }
        }
        let requests = Arc::new(Requests {
            grpc: Family::default(),
            grpc_seconds: Family::new_with_constructor(latency),
            http: Family::default(),
            http_seconds: Family::new_with_constructor(latency),
            methods,
        });
        registry.register(
            "grpc_requests",
            "gRPC calls served, by method and status code",
            requests.grpc.clone(),
        );
        registry.register_with_unit(
            "grpc_request_duration",
            "Time to answer a gRPC call (to its response headers), by method",
            Unit::Seconds,
            requests.grpc_seconds.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests served (gateway, metrics, health), by route, verb and status",
            requests.http.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request, by route",
            Unit::Seconds,
            requests.http_seconds.clone(),
        );
        Ok(requests)
    }

    fn grpc_method(&self, path: &str) -> String {
        if self.methods.contains(path) {
            path.trim_start_matches('/').to_string()
        } else {
            "unknown".to_string()
        }
    }
}

/// The HTTP routes served beside gRPC, as metric labels.
fn http_route(path: &str) -> &'static str {
    match path {
        "/metrics" => "/metrics",
        "/health" => "/health",
        "/v1/kv" => "/v1/kv",
        _ if path.starts_with("/v1/kv/") => "/v1/kv/{key}",
        _ => "other",
    }
}

fn verb(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

/// The middleware: times and counts each request.
pub async fn observe(
    State(requests): State<Arc<Requests>>,
    request: Request,
    next: Next,
) -> Response {
    let grpc = request
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    let path = request.uri().path().to_string();
    let http_verb = verb(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    if grpc {
        let method = requests.grpc_method(&path);
        let code = response
            .headers()
            .get("grpc-status")
            .map_or(tonic::Code::Ok, |value| {
                tonic::Code::from_bytes(value.as_bytes())
            });
        requests
            .grpc
            .get_or_create(&GrpcLabels {
                method: method.clone(),
                code: format!("{code:?}"),
            })
            .inc();
        requests
            .grpc_seconds
            .get_or_create(&GrpcMethod { method })
            .observe(seconds);
    } else {
        let route = http_route(&path);
        requests
            .http
            .get_or_create(&HttpLabels {
                route,
                verb: http_verb,
                code: response.status().as_u16(),
            })
            .inc();
        requests
            .http_seconds
            .get_or_create(&HttpRoute { route })
            .observe(seconds);
    }
    response
}

/// RocksDB's size, read at scrape time.
pub struct DiskCollector(pub Arc<RocksDisk>);

impl std::fmt::Debug for DiskCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskCollector")
    }
}

impl Collector for DiskCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok((sst, memtables)) = self.0.size_bytes() else {
            return Ok(());
        };
        let mut metric = encoder.encode_descriptor(
            "rocksdb_size",
            "Bytes RocksDB holds: live SST files on disk, memtables in memory.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        for (part, bytes) in [("sst", sst), ("memtables", memtables)] {
            let labels = [("part", part)];
            ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX))
                .encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_methods_become_labels() {
        let mut registry = Registry::default();
        let requests =
            Requests::new(&[seedkv_proto::pb::FILE_DESCRIPTOR_SET], &mut registry).expect("decode");
        assert_eq!(
            requests.grpc_method("/seedkv.v1.Kv/Put"),
            "seedkv.v1.Kv/Put"
        );
        assert_eq!(requests.grpc_method("/seedkv.v1.Kv/Nope"), "unknown");
        assert_eq!(requests.grpc_method("/x"), "unknown");
        assert_eq!(http_route("/v1/kv/a/b"), "/v1/kv/{key}");
        assert_eq!(http_route("/anything"), "other");
    }
}
