//! Channels to nodes and routers: one configuration for every connection a client makes.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// TCP connect timeout: a node that does not accept within a second is treated as down (and
/// its part retried elsewhere or later).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// HTTP/2 keepalive: notices a node that vanished without closing its connections.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// How long a keepalive ping may go unanswered before the connection counts as dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 frame size: 256 KiB frames carry big batches in far fewer syscalls than 16 KiB ones
/// (large check batches measured 1.7x faster).
pub const HTTP2_MAX_FRAME_SIZE: u32 = 256 << 10;

/// The endpoint for `address` (`HOST:PORT`, or a `http://` URL): TCP_NODELAY (Nagle held
/// single-key calls to ~1 K/s), large frames, keepalive.
pub fn endpoint(address: &str) -> Result<Endpoint, tonic::transport::Error> {
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    Ok(Endpoint::from_shared(url)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .max_frame_size(HTTP2_MAX_FRAME_SIZE)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// A channel to `address` that connects on first use (and reconnects after failures).
pub fn lazy(address: &str) -> Result<Channel, Status> {
    let endpoint = endpoint(address)
        .map_err(|e| Status::unavailable(format!("invalid node address {address:?}: {e}")))?;
    Ok(endpoint.connect_lazy())
}
