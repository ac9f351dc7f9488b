//! The operations HTTP endpoint on `--metrics-listen`: `GET /metrics` (Prometheus text), `GET /health`
//! (the process answers: liveness) and `GET /ready` (recovery finished and the Kafka port accepts: 200,
//! otherwise 503). A ready broker with offline partitions (files it could not open at start) is still
//! ready, since it serves the others; the body names them, one `offline <topic>-<partition>: <cause>` line
//! each after the `ready` line.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, server::conn::http1, service::service_fn, Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tracing::debug;

/// Set once the broker has recovered and listens for Kafka clients.
pub static READY: AtomicBool = AtomicBool::new(false);

/// The offline partitions `/ready` names: one `offline <partition>: <cause>` line each.
static OFFLINE: RwLock<String> = RwLock::new(String::new());

/// Sets the partitions `/ready` reports offline, as (partition, cause) pairs.
pub fn set_offline(partitions: impl IntoIterator<Item = (String, String)>) {
    *OFFLINE.write() = partitions
        .into_iter()
        .map(|(tp, cause)| format!("offline {tp}: {cause}\n"))
        .collect();
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn route(req: &Request<Incoming>, metrics: &PrometheusHandle) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, metrics.render()),
        "/health" => reply(StatusCode::OK, "ok\n"),
        "/ready" if READY.load(Ordering::Acquire) => {
            reply(StatusCode::OK, format!("ready\n{}", OFFLINE.read()))
        }
        "/ready" => reply(StatusCode::SERVICE_UNAVAILABLE, "recovering\n"),
        _ => reply(StatusCode::NOT_FOUND, "try /metrics, /health or /ready\n"),
    }
}

/// Serves the endpoint until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: PrometheusHandle) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = route(&req, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "metrics connection ended");
            }
        });
    }
}

/// Binds the endpoint (so a bad address fails the start) and returns the bound address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
