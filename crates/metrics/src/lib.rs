//! What the node's and the router's Prometheus metrics share: the counters of the
//! `leakbloom.v1.Lookup` calls they serve ([`Requests`]) and the endpoint that serves the text
//! format on `GET /metrics` over plain HTTP/1.1 ([`serve`]), on a port of its own.
//!
//! Labels are rpc names and gRPC codes: never keys or identifiers.

use std::convert::Infallible;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::core::Collector;
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};
use tokio::net::TcpListener;

/// Latency buckets in seconds: sub-millisecond checks to retried calls near their deadline.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registers `collector` in `registry` and returns it.
pub fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

/// Counters of served `Lookup` calls: `PREFIX_requests_total{rpc,code}`,
/// `PREFIX_request_seconds{rpc}`, `PREFIX_keys_checked_total` (keys of successful checks) and
/// `PREFIX_keys_inserted_total` (keys of acknowledged inserts).
#[derive(Debug, Clone)]
pub struct Requests {
    requests: IntCounterVec,
    latency: HistogramVec,
    keys_checked: IntCounter,
    keys_inserted: IntCounter,
}

impl Requests {
    /// New counters named `prefix_...`, registered in `registry`.
    pub fn register(registry: &Registry, prefix: &str) -> Requests {
        let requests = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_requests_total"),
                "Lookup calls served, by rpc and gRPC code.",
            ),
            &["rpc", "code"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                format!("{prefix}_request_seconds"),
                "Lookup call latency, by rpc.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["rpc"],
        )
        .expect("valid metric");
        let counter = |name: &str, help: &str| {
            register(
                registry,
                IntCounter::new(format!("{prefix}_{name}"), help).expect("valid metric"),
            )
        };
        Requests {
            keys_checked: counter("keys_checked_total", "Keys in successful Check calls."),
            keys_inserted: counter("keys_inserted_total", "Keys in acknowledged Insert calls."),
            requests: register(registry, requests),
            latency: register(registry, latency),
        }
    }

    /// Records one call of `rpc`, started at `start`, that ended with `code`.
    pub fn request(&self, rpc: &str, code: tonic::Code, start: Instant) {
        self.requests
            .with_label_values(&[rpc, code_label(code)])
            .inc();
        self.latency
            .with_label_values(&[rpc])
            .observe(start.elapsed().as_secs_f64());
    }

    /// Records one call of `rpc` started at `start` by its result, and passes the result on.
    pub fn finish<T>(
        &self,
        rpc: &str,
        start: Instant,
        result: Result<T, tonic::Status>,
    ) -> Result<T, tonic::Status> {
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        self.request(rpc, code, start);
        result
    }

    /// Counts the keys of a successful check.
    pub fn keys_checked(&self, keys: u64) {
        self.keys_checked.inc_by(keys);
    }

    /// Counts the keys of an acknowledged insert.
    pub fn keys_inserted(&self, keys: u64) {
        self.keys_inserted.inc_by(keys);
    }
}

/// A gRPC code as a label value, without formatting one per call.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The text exposition of `registries`' metrics, in order.
pub fn encode<'a>(registries: impl IntoIterator<Item = &'a Registry>) -> String {
    let families: Vec<_> = registries.into_iter().flat_map(Registry::gather).collect();
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut text)
        .expect("encoding metrics to memory cannot fail");
    String::from_utf8(text).expect("the text format is UTF-8")
}

/// Serves `GET /metrics` on `listener`, each scrape answered with what `render` returns, until
/// the task is dropped or aborted. Anything else is a 404.
pub async fn serve<F, Fut>(listener: TcpListener, render: F)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let render = render.clone();
                async move { Ok::<_, Infallible>(answer(&request, render).await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, %peer, "metrics connection ended");
            }
        });
    }
}

async fn answer<B, F, Fut>(request: &hyper::Request<B>, render: F) -> Response<Full<Bytes>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = String>,
{
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, "text/plain; version=0.0.4", render().await),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "only GET /metrics is served here\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_rpc_and_code() {
        let registry = Registry::new();
        let requests = Requests::register(&registry, "t");
        let start = Instant::now();
        let _ = requests.finish("Check", start, Ok::<_, tonic::Status>(()));
        let _ = requests.finish::<()>("Check", start, Err(tonic::Status::not_found("x")));
        requests.keys_checked(3);
        let text = encode([&registry]);
        assert!(
            text.contains("t_requests_total{code=\"Ok\",rpc=\"Check\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("t_requests_total{code=\"NotFound\",rpc=\"Check\"} 1"),
            "{text}"
        );
        assert!(text.contains("t_keys_checked_total 3"), "{text}");
        assert!(
            text.contains("t_request_seconds_count{rpc=\"Check\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn code_labels_match_the_debug_names() {
        for code in 0..=16 {
            let code = tonic::Code::from_i32(code);
            assert_eq!(code_label(code), format!("{code:?}"));
        }
    }
}
