//! One way to serve a gRPC port, used by a node's client and peer ports and by a router's port:
//! [`Port`] collects the services, optionally `grpc.health.v1` and server reflection, and
//! [`Port::run`] serves them on a bound listener with [`Settings`] until a shutdown future
//! completes, then finishes the calls in flight.
//!
//! # Why
//! Every port of the cluster accepts and carries connections the same way (TCP_NODELAY and
//! stalled connections closed through [`Incoming`], HTTP/2 frame size, keepalive, concurrency),
//! so each setting is made once, in [`Port::run`]: the one place TLS will be added too.
//!
//! Reflection advertises the services added to the port, not every service of the descriptor
//! sets it was given: a client port that reflects the public descriptor set shows neither the
//! internal services nor public ones it does not serve (a router has no `Cluster`), and a port
//! without reflection (the peer port) describes nothing.
//!
//! # Caveats
//! - Message size limits stay on each service (`max_decoding_message_size` and
//!   `max_encoding_message_size` of tonic's generated servers): tonic applies them per service,
//!   and they differ per service (the client API's follow `max_batch`, the peer service's the
//!   largest Raft batch).

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::server::HealthReporter;

use crate::{Incoming, Timeouts};

/// HTTP/2 frame size: 256 KiB instead of 16 KiB. h2 writes every frame with its own syscall, so
/// large check batches were measured 1.7x faster with it.
pub const HTTP2_MAX_FRAME_SIZE: u32 = 256 << 10;

/// How a port accepts and carries connections. The defaults are what every port of the
/// cluster uses; only the connection timeouts come from configuration today.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Largest HTTP/2 frame the server sends and accepts.
    pub max_frame_size: u32,
    /// When connections that stall are closed (see [`Incoming`]).
    pub connections: Timeouts,
    /// Server-sent HTTP/2 pings; `None`: the server sends none (our clients ping, and silent
    /// connections are closed by [`Settings::connections`]).
    pub keepalive: Option<Keepalive>,
    /// Most concurrent calls (HTTP/2 streams) one connection may open; `None`: hyper's default.
    pub max_concurrent_streams: Option<u32>,
    /// Most calls of one connection handled at once, the rest queued; `None`: no limit.
    pub concurrency_per_connection: Option<usize>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_frame_size: HTTP2_MAX_FRAME_SIZE,
            connections: Timeouts::default(),
            keepalive: None,
            max_concurrent_streams: None,
            concurrency_per_connection: None,
        }
    }
}

/// Server-sent HTTP/2 keepalive pings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// How often a ping is sent on a connection.
    pub interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub timeout: Duration,
}

/// A gRPC port being assembled: its services, and whether it serves health and reflection.
/// Served by [`Port::run`].
#[derive(Debug)]
pub struct Port {
    settings: Settings,
    routes: RoutesBuilder,
    /// Names of the services added, advertised by reflection.
    served: Vec<&'static str>,
    /// Descriptor sets reflection answers from.
    descriptors: Vec<&'static [u8]>,
    /// Whether reflection (v1 and v1alpha) is served.
    reflection: bool,
}

impl Port {
    /// A port with no services yet, served with `settings`.
    pub fn new(settings: Settings) -> Port {
        Port {
            settings,
            routes: RoutesBuilder::default(),
            served: Vec::new(),
            descriptors: Vec::new(),
            reflection: false,
        }
    }

    /// Serves `service` (a tonic generated server) on this port.
    pub fn add_service<S>(mut self, service: S) -> Port
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        self.served.push(S::NAME);
        self
    }

    /// Serves `grpc.health.v1.Health`; the server as a whole (service "") is SERVING from the
    /// start. The reporter sets each service's status.
    pub fn health(mut self) -> (Port, HealthReporter) {
        let (reporter, health) = tonic_health::server::health_reporter();
        self.descriptors.push(tonic_health::pb::FILE_DESCRIPTOR_SET);
        (self.add_service(health), reporter)
    }

    /// Serves server reflection, v1 and v1alpha (grpcurl 1.8 speaks only v1alpha), describing
    /// the services of this port from `descriptors` (an encoded `FileDescriptorSet` holding
    /// them). Lists the services added to the port, health and reflection included.
    pub fn reflection(mut self, descriptors: &'static [u8]) -> Port {
        self.descriptors.push(descriptors);
        self.reflection = true;
        self
    }

    /// Names of the services added so far, in order.
    pub fn services(&self) -> &[&'static str] {
        &self.served
    }

    /// Serves on `listener` until `shutdown` completes, then finishes the calls in flight.
    /// Every transport setting of every port is made here.
    pub async fn run(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        if self.reflection {
            self.add_reflection();
        }
        let Settings {
            max_frame_size,
            connections,
            keepalive,
            max_concurrent_streams,
            concurrency_per_connection,
        } = self.settings;
        let mut server = tonic::transport::Server::builder()
            .max_frame_size(Some(max_frame_size))
            .max_concurrent_streams(max_concurrent_streams)
            .http2_keepalive_interval(keepalive.map(|k| k.interval))
            .http2_keepalive_timeout(keepalive.map(|k| k.timeout));
        if let Some(limit) = concurrency_per_connection {
            server = server.concurrency_limit_per_connection(limit);
        }
        // TCP_NODELAY, and connections that stall are closed.
        let incoming = Incoming::new(listener, connections);
        server
            .add_routes(self.routes.routes())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    }

    /// Adds reflection v1 and v1alpha, advertising the services added so far and themselves.
    fn add_reflection(&mut self) {
        use tonic_reflection::pb::{v1, v1alpha};
        let mut names = self.served.clone();
        names.push(v1::server_reflection_server::SERVICE_NAME);
        names.push(v1alpha::server_reflection_server::SERVICE_NAME);
        let builder = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .include_reflection_service(false)
                .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(v1alpha::FILE_DESCRIPTOR_SET);
            for set in &self.descriptors {
                builder = builder.register_encoded_file_descriptor_set(set);
            }
            for name in &names {
                builder = builder.with_service_name(*name);
            }
            builder
        };
        let v1 = builder().build_v1().expect("valid descriptor sets");
        let v1alpha = builder().build_v1alpha().expect("valid descriptor sets");
        self.routes.add_service(v1);
        self.routes.add_service(v1alpha);
        self.served = names;
    }
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    use super::*;

    // What each port lists through reflection is checked end to end, on a node's and a
    // router's ports, in tests/ports.rs.

    #[test]
    fn a_port_names_the_services_added_in_order() {
        let (port, _reporter) = Port::new(Settings::default()).health();
        let port = port.reflection(tonic_health::pb::FILE_DESCRIPTOR_SET);
        assert_eq!(port.services(), ["grpc.health.v1.Health"]);
    }

    #[tokio::test]
    async fn a_port_serves_until_shut_down_then_run_returns() {
        let settings = Settings {
            keepalive: Some(Keepalive {
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
            }),
            max_concurrent_streams: Some(8),
            concurrency_per_connection: Some(4),
            ..Settings::default()
        };
        let (port, _reporter) = Port::new(settings).health();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(port.run(listener, async {
            let _ = stopped.await;
        }));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status, 1, "the server as a whole is SERVING");

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("run returned after the shutdown")
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
