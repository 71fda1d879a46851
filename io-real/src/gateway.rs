//! The HTTP side of a node's port: a JSON gateway to the key-value API for `curl`, the
//! Prometheus `/metrics` and the `/health` probe.
//!
//! The gateway is a client of the cluster like any other (`seedkv_proto::Client`, seeded
//! with this node's own address): it routes each key to its group's leader, follows leader
//! hints and `MOVED`, and writes through an exactly-once session, so `curl` may hit any
//! node. Keys are the rest of the path after `/v1/kv/` (percent-decoded, `/` allowed);
//! values are the request body, and come back as `value` when they are UTF-8 and as
//! `value_base64` otherwise, so no byte is lost.
//!
//! | request | answer |
//! |---|---|
//! | `PUT /v1/kv/{key}` (body: value) | `{"key", "revision"}` |
//! | `GET /v1/kv/{key}[?consistency=serializable]` | `{"key", "value", "revision"}`, 404 if absent |
//! | `DELETE /v1/kv/{key}` | `{"key", "deleted", "revision"}` |
//! | `GET /v1/kv?prefix=P&limit=N[&consistency=...]` | `{"kvs": [...], "more"}` |
//!
//! Errors are `{"error", "code"}` with 400 (invalid request, nothing done), 503 (no node
//! could take it, nothing done), 504 (a write's outcome is unknown) or 500.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use base64::Engine;
use prometheus_client::registry::Registry;
use seedkv_core::command::{ScanRange, Versioned};
use seedkv_proto::{Client, ClientError, Consistency, Node};
use serde::Deserialize;
use serde_json::{json, Value};

/// How long `/health` waits for the disk probe (a read of one row) before calling the disk
/// unresponsive.
pub const HEALTH_PROBE_MS: u64 = 1_000;

/// Entries `GET /v1/kv` returns when no `limit` is given.
pub const DEFAULT_LIST_LIMIT: u32 = 100;

/// What the HTTP handlers share.
pub struct Gateway {
    pub node: Arc<Node>,
    pub client: Client,
    /// The node's whole registry: its own figures, requests served, RocksDB's size.
    pub registry: Registry,
    pub probe: Arc<DiskProbe>,
}

/// The disk probe of `/health` and gRPC health, one at a time: a read that hangs holds
/// one blocking thread, and later probes report it instead of starting another.
#[derive(Debug, Default)]
pub struct DiskProbe {
    running_since: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl DiskProbe {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<tokio::time::Instant>> {
        self.running_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads one row of `node`'s disk within [`HEALTH_PROBE_MS`]; `Err` says why not.
    pub async fn read(self: &Arc<Self>, node: &Arc<Node>) -> Result<(), String> {
        {
            let mut slot = self.slot();
            if let Some(since) = *slot {
                return Err(format!(
                    "a read has not returned for {} ms",
                    since.elapsed().as_millis()
                ));
            }
            *slot = Some(tokio::time::Instant::now());
        }
        let (probe, probing) = (self.clone(), node.clone());
        let read = tokio::task::spawn_blocking(move || {
            let result = seedkv_proto::metrics::read_disk(&probing);
            *probe.slot() = None;
            result
        });
        match tokio::time::timeout(Duration::from_millis(HEALTH_PROBE_MS), read).await {
            Ok(Ok(result)) => result,
            Ok(Err(err)) => {
                *self.slot() = None;
                Err(format!("the probe stopped: {err}"))
            }
            Err(_) => Err(format!("a read did not return within {HEALTH_PROBE_MS} ms")),
        }
    }
}

/// The HTTP routes, to be merged with the gRPC services on one port.
pub fn routes(gateway: Arc<Gateway>) -> Router {
    // A body may hold one value: the node refuses larger ones with its own message.
    let max_body_bytes = gateway.node.limits().max_value_bytes + 1;
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/v1/kv", get(list))
        .route("/v1/kv/", any(no_key))
        .route(
            "/v1/kv/{*key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(gateway)
}

/// What nobody serves: a gRPC call gets gRPC's own `UNIMPLEMENTED` (a generic client must
/// not see an HTTP 404), any other request a JSON 404. Set on the merged router, in place
/// of tonic's fallback, which answers everything as gRPC.
pub async fn fallback(request: Request) -> Response {
    let grpc = request
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    let path = request.uri().path();
    if grpc {
        tonic::Status::unimplemented(format!("no service or method at {path}"))
            .into_http::<axum::body::Body>()
    } else {
        error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("nothing is served at {path}"),
        )
    }
}

async fn no_key() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        "a key is needed after /v1/kv/",
    )
}

/// An extractor's rejection (a path that is not UTF-8, a bad query, a body over the
/// limit) as the gateway's JSON error.
fn rejected(status: StatusCode, text: &str) -> Response {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "TOO_LARGE",
        _ => "INVALID_ARGUMENT",
    };
    error(status, code, text)
}

/// `/metrics`: OpenMetrics when the scraper asks for it (Prometheus does), otherwise the
/// classic Prometheus text format (0.0.4), which every tool reads.
async fn metrics(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &gateway.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response();
    }
    let open_metrics = headers
        .get(ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    if open_metrics {
        (
            [(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    } else {
        (
            [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            prometheus_text(&text),
        )
            .into_response()
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter's family is named
/// after its samples (`x_total`), and `# UNIT` and `# EOF` go.
pub fn prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = open_metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let described = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|tag| line.strip_prefix(tag).map(|rest| (tag, rest)));
        match described {
            Some((tag, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{tag}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `/health`: 200 when every hosted group knows a leader and the disk answers, else 503
/// with the reasons.
async fn health(State(gateway): State<Arc<Gateway>>) -> Response {
    let (status, body) = health_report(&gateway.node, &gateway.probe).await;
    (status, Json(body)).into_response()
}

/// The health verdict and its JSON body.
pub async fn health_report(node: &Arc<Node>, probe: &Arc<DiskProbe>) -> (StatusCode, Value) {
    let groups = seedkv_proto::metrics::group_views(node);
    let read = probe.read(node).await;
    let disk = seedkv_proto::metrics::disk_view(node, read);
    let problems = seedkv_core::health::problems(&groups, &disk);
    let healthy = problems.is_empty();
    let body = json!({
        "healthy": healthy,
        "node": node.id(),
        "groups": groups.iter().map(|group| json!({
            "group": group.group.0,
            "leader": group.leader,
        })).collect::<Vec<_>>(),
        "problems": problems,
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

#[derive(Deserialize)]
struct ReadParams {
    consistency: Option<String>,
}

#[derive(Deserialize)]
struct ListParams {
    prefix: Option<String>,
    limit: Option<u32>,
    consistency: Option<String>,
}

fn parse_consistency(asked: Option<&str>) -> Result<Consistency, String> {
    match asked {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("serializable") => Ok(Consistency::Serializable),
        Some(other) => Err(format!(
            "consistency must be linearizable or serializable, not {other:?}"
        )),
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "error": message, "code": code }))).into_response()
}

fn client_error(err: &ClientError) -> Response {
    let (status, code) = match err {
        ClientError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        ClientError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        ClientError::Unknown(_) => (StatusCode::GATEWAY_TIMEOUT, "OUTCOME_UNKNOWN"),
        ClientError::Server(_) => (StatusCode::INTERNAL_SERVER_ERROR, "SERVER_ERROR"),
    };
    error(status, code, &err.to_string())
}

/// A key or value as JSON: text when it is UTF-8, base64 under `{field}_base64` otherwise.
fn bytes_field(object: &mut serde_json::Map<String, Value>, field: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object.insert(field.to_string(), Value::from(text)),
        Err(_) => object.insert(
            format!("{field}_base64"),
            Value::from(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
}

fn entry(key: &[u8], versioned: &Versioned) -> Value {
    let mut object = serde_json::Map::new();
    bytes_field(&mut object, "key", key);
    bytes_field(&mut object, "value", &versioned.value);
    object.insert("revision".into(), Value::from(versioned.revision));
    Value::Object(object)
}

async fn get_key(
    State(gateway): State<Arc<Gateway>>,
    key: Result<Path<String>, PathRejection>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Response {
    let (Path(key), Query(params)) = match (key, params) {
        (Ok(key), Ok(params)) => (key, params),
        (Err(rejection), _) => return rejected(rejection.status(), &rejection.body_text()),
        (_, Err(rejection)) => return rejected(rejection.status(), &rejection.body_text()),
    };
    let consistency = match parse_consistency(params.consistency.as_deref()) {
        Ok(consistency) => consistency,
        Err(message) => return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &message),
    };
    match gateway.client.get(key.as_bytes(), consistency).await {
        Ok(Some(versioned)) => Json(entry(key.as_bytes(), &versioned)).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("key {key:?} not found"),
        ),
        Err(err) => client_error(&err),
    }
}

async fn put_key(
    State(gateway): State<Arc<Gateway>>,
    key: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (Path(key), body) = match (key, body) {
        (Ok(key), Ok(body)) => (key, body),
        (Err(rejection), _) => return rejected(rejection.status(), &rejection.body_text()),
        (_, Err(rejection)) => return rejected(rejection.status(), &rejection.body_text()),
    };
    match gateway.client.put(key.as_bytes(), &body).await {
        Ok(revision) => Json(json!({ "key": key, "revision": revision })).into_response(),
        Err(err) => client_error(&err),
    }
}

async fn delete_key(
    State(gateway): State<Arc<Gateway>>,
    key: Result<Path<String>, PathRejection>,
) -> Response {
    let Path(key) = match key {
        Ok(key) => key,
        Err(rejection) => return rejected(rejection.status(), &rejection.body_text()),
    };
    match gateway.client.delete(key.as_bytes()).await {
        Ok((revision, deleted)) => {
            Json(json!({ "key": key, "deleted": deleted, "revision": revision })).into_response()
        }
        Err(err) => client_error(&err),
    }
}

async fn list(
    State(gateway): State<Arc<Gateway>>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(params) => params,
        Err(rejection) => return rejected(rejection.status(), &rejection.body_text()),
    };
    let consistency = match parse_consistency(params.consistency.as_deref()) {
        Ok(consistency) => consistency,
        Err(message) => return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &message),
    };
    let range = ScanRange {
        prefix: params.prefix.unwrap_or_default().into_bytes(),
        from: Vec::new(),
        to: Vec::new(),
    };
    let limit = params.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if limit == 0 {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "limit must be at least 1",
        );
    }
    match gateway.client.scan(&range, limit, consistency).await {
        Ok((entries, more)) => Json(json!({
            "kvs": entries.iter().map(|(key, versioned)| entry(key, versioned)).collect::<Vec<_>>(),
            "more": more,
        }))
        .into_response(),
        Err(err) => client_error(&err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_renamed_for_the_classic_format() {
        let open = "# HELP seedkv_fsyncs fsyncs.\n# TYPE seedkv_fsyncs counter\nseedkv_fsyncs_total 3\n\
                    # HELP seedkv_d_seconds d.\n# TYPE seedkv_d_seconds histogram\n# UNIT seedkv_d_seconds seconds\n\
                    seedkv_d_seconds_sum 0.1\n# EOF\n";
        let text = prometheus_text(open);
        assert!(
            text.contains("# HELP seedkv_fsyncs_total fsyncs.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE seedkv_fsyncs_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE seedkv_d_seconds histogram\n"),
            "{text}"
        );
        assert!(
            !text.contains("# UNIT") && !text.contains("# EOF"),
            "{text}"
        );
    }
}
