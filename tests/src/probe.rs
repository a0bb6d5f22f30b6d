//! The client side: does a connection get through the firewall?

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{Netns, Proto};

/// How many probes [`probe_all`] runs at once. Probes that a firewall drops
/// each wait for their whole timeout, so parallelism is what keeps a matrix
/// of a few hundred mostly-dropped cells quick; the bound keeps thread and
/// socket counts modest.
pub const PROBE_PARALLELISM: usize = 64;

/// Makes every UDP payload unique, so that a late echo of an earlier probe
/// is never taken for the answer to the current one.
static NONCE: AtomicU64 = AtomicU64::new(0);

/// One probe: from a socket created inside `ns`, can `proto` reach `target`
/// within `timeout`?
///
/// * TCP: the connection is established (the listener's port is open and
///   nothing in between dropped or rejected the handshake). A closed port
///   answers with a reset, so that probe fails fast; a dropped SYN takes the
///   whole `timeout`.
/// * UDP: a datagram gets its echo back from `target` (see
///   [`crate::Listener`]). An ICMP "port unreachable" fails fast; silence
///   takes the whole `timeout`.
pub fn probe(ns: &Netns, proto: Proto, target: SocketAddr, timeout: Duration) -> bool {
    ns.enter(|| match proto {
        Proto::Tcp => TcpStream::connect_timeout(&target, timeout).is_ok(),
        Proto::Udp => connected_udp_socket(target, 0)
            .map(|socket| echo_exchange(&socket, timeout))
            .unwrap_or(false),
    })
}

/// One cell of a [`probe_all`] matrix.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSpec<'a> {
    /// The client namespace the probe is sent from.
    pub ns: &'a Netns,
    pub proto: Proto,
    pub target: SocketAddr,
}

impl<'a> ProbeSpec<'a> {
    pub fn new(ns: &'a Netns, proto: Proto, target: SocketAddr) -> ProbeSpec<'a> {
        ProbeSpec { ns, proto, target }
    }
}

/// Runs all `specs` as [`probe`]s, [`PROBE_PARALLELISM`] at a time, and
/// returns their results in the same order.
///
/// Each probe uses its own socket, so they do not influence each other
/// (beyond the kernel rate-limiting the ICMP errors of a namespace, which
/// can turn a fast "unreachable" into a slow timeout but not into success).
pub fn probe_all(specs: &[ProbeSpec<'_>], timeout: Duration) -> Vec<bool> {
    let results = Mutex::new(vec![false; specs.len()]);
    let next = AtomicUsize::new(0);
    thread::scope(|scope| {
        for _ in 0..PROBE_PARALLELISM.min(specs.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(spec) = specs.get(i) else {
                    break;
                };
                let ok = probe(spec.ns, spec.proto, spec.target, timeout);
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = ok;
            });
        }
    });
    results.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// A long-lived UDP "flow" from a client namespace to a target: one socket
/// with a fixed local address and port, so every [`UdpFlow::exchange`]
/// belongs to the same 5-tuple and hence the same conntrack entry.
///
/// This is what tests whether a firewall change also cuts traffic that is
/// already flowing — rules that only look at new connections would let an
/// established flow continue.
#[derive(Debug)]
pub struct UdpFlow {
    socket: UdpSocket,
    target: SocketAddr,
}

impl UdpFlow {
    /// Opens a flow from an ephemeral local port (fixed for the flow's
    /// lifetime) in `ns` to `target`.
    pub fn new(ns: &Netns, target: SocketAddr) -> Result<UdpFlow> {
        UdpFlow::with_local_port(ns, 0, target)
    }

    /// Opens a flow from `local_port` (0: ephemeral) in `ns` to `target`,
    /// for tests where the client's source port matters.
    pub fn with_local_port(ns: &Netns, local_port: u16, target: SocketAddr) -> Result<UdpFlow> {
        let socket = ns
            .try_enter(|| connected_udp_socket(target, local_port))?
            .with_context(|| format!("cannot open a UDP flow to {target} from {}", ns.name()))?;
        Ok(UdpFlow { socket, target })
    }

    /// Sends one datagram and reports whether its echo came back within
    /// `timeout`.
    pub fn exchange(&self, timeout: Duration) -> bool {
        echo_exchange(&self.socket, timeout)
    }

    /// The flow's local address (inside the client namespace).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// Where the flow sends to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }
}

/// A UDP socket of the current thread's namespace, connected to `target`.
///
/// Connected, because then the kernel passes ICMP errors (port unreachable)
/// to the socket, so a closed port fails at once instead of after the
/// timeout, and only datagrams from `target` are received.
fn connected_udp_socket(target: SocketAddr, local_port: u16) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, local_port).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, local_port).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(target)?;
    Ok(socket)
}

/// Sends a unique payload on a connected socket and waits up to `timeout`
/// for that same payload to come back.
fn echo_exchange(socket: &UdpSocket, timeout: Duration) -> bool {
    // Clear an ICMP error left pending by an earlier exchange, which would
    // otherwise fail this one regardless of what happens now.
    let _ = socket.take_error();
    let nonce = NONCE.fetch_add(1, Ordering::Relaxed);
    let payload = format!("palisade-probe {} {nonce}", std::process::id());
    if socket.send(payload.as_bytes()).is_err() {
        return false;
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match socket.recv(&mut buf) {
            Ok(len) if buf[..len] == *payload.as_bytes() => return true,
            // A late echo of an earlier exchange on the same flow.
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Timeout, or ECONNREFUSED from an ICMP port unreachable.
            Err(_) => return false,
        }
    }
}
