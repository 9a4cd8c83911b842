//! Test support shared by leakbloom's tests, simulations and benches (like raft-rs's
//! `harness`): one home for what every test binary used to copy.
//!
//! # Layout
//! - [`scratch`](mod@scratch): scratch directories, on tmpfs where a test checks logic rather than the disk.
//! - [`wait`]: [`eventually`] (poll a condition until it holds or a deadline passes) and
//!   [`within`] (a future's deadline), and their forms for plain threads in
//!   [`wait::blocking`].
//! - [`free_port`]: a loopback port for a child process to bind later.
//! - [`process`]: child processes under supervision ([`Proc`]: logs kept, ready markers,
//!   freeze, kill, terminate; [`address_space_capped`]).
//! - [`history`]: invariant checkers the seeded simulations share ([`AppliedStates`],
//!   [`Reads`]).
//! - [`seeds`]: running a simulation over many seeds and replaying the one that failed.
//! - [`golden`]: golden scripts: commands and their expected output, compared or rewritten.
//!
//! # Why
//! Each test binary had its own `scratch`, `eventually` and process helpers, with deadlines,
//! poll intervals and failure messages that drifted apart. Here there is one of each, and a
//! failure names what never happened and what was seen last.
//!
//! Nothing here knows leakbloom's nodes, routers or clients (this crate depends on none of
//! them, so every crate can use it in its tests); harnesses that start real nodes stay next to
//! their tests and are built from these pieces.

pub mod golden;
pub mod history;
pub mod process;
pub mod scratch;
pub mod seeds;
pub mod wait;

pub use history::{AppliedStates, Reads};
pub use process::{address_space_capped, Proc};
pub use scratch::{scratch, scratch_on_disk};
pub use wait::{eventually, within};

/// A free port on 127.0.0.1 for a child process (or a server whose peers must know its address
/// before it binds) to bind later; [`leakbloom_net::free_port`] says how it is chosen.
pub fn free_port() -> u16 {
    leakbloom_net::free_port([127, 0, 0, 1].into()).expect("a free port on 127.0.0.1")
}
