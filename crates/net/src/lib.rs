//! How leakbloom serves gRPC: a node's client and peer ports and a router's port are all
//! assembled by [`server::Port`] and accept connections through [`Incoming`].
//!
//! # Layout
//! - [`server`]: [`Port`](server::Port), the services of one port with optional health and
//!   reflection, served with its [`Settings`](server::Settings) (HTTP/2 frame size, keepalive,
//!   concurrency, connection timeouts) until shut down.
//! - [`incoming`]: [`Incoming`], accepted TCP connections with TCP_NODELAY that close
//!   themselves when they stall ([`Timeouts`]).
//! - [`free_port`] (module `port`): a port for a server whose peers must know its address
//!   before it binds.

pub mod incoming;
mod port;
pub mod server;

pub use port::free_port;

pub use incoming::{
    Conn, Incoming, Timeouts, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, PREFACE_LEN,
};
