//! Choosing a port before binding it: `leakbloom dev` and tests start nodes whose peers must
//! know each node's peer address before that node binds, so port 0 (the kernel's choice at
//! bind time) will not do.

/// First port probed: above the well-known and most registered service ports.
const FIRST: u32 = 10_000;
/// Ports probed: `FIRST` up to 32 000, below the kernel's ephemeral range (32 768 and up by
/// default), so that no concurrent bind of port 0 (a client listener, another test's server)
/// can be handed the port between the probe and the real bind.
const SPAN: u32 = 22_000;
/// Spread of the start by process id: concurrent processes (test binaries run in parallel)
/// probe from different places instead of racing for the same ports.
const SPREAD: u32 = 20_000;

/// A free TCP port on `ip`, for a server whose peers must know its address before it binds.
/// Probed in 10 000..32 000, below the kernel's ephemeral range, so that no concurrent bind of
/// port 0 can take it before the server binds it; successive calls in one process try
/// successive ports from a start that depends on the process id, so they never return a port
/// twice while it is still free.
pub fn free_port(ip: std::net::IpAddr) -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % SPREAD;
    let mut last = None;
    for _ in 0..SPAN {
        let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let port = u16::try_from(port).expect("below 32000");
        match std::net::TcpListener::bind((ip, port)) {
            Ok(_) => return Ok(port),
            Err(error) => last = Some(error),
        }
    }
    Err(last.expect("tried at least one port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successive_ports_are_distinct_and_below_the_ephemeral_range() {
        let ip = [127, 0, 0, 1].into();
        let ports: Vec<u16> = (0..20).map(|_| free_port(ip).unwrap()).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        assert!(
            ports.iter().all(|port| (10_000..32_000).contains(port)),
            "{ports:?}"
        );
    }
}
