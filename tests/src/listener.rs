//! Stand-ins for the services of the PBX.

use std::fmt;
use std::io::{ErrorKind, IoSlice, IoSliceMut};
use std::net::{Ipv6Addr, SocketAddrV6, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, Shutdown,
    SockFlag, SockType, SockaddrIn6,
};
use nix::sys::time::TimeVal;

use crate::Netns;

/// Transport protocol of a service, a probe or a firewall rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// How long a server thread blocks before it rechecks whether to stop. Drop
/// normally wakes the threads at once (by shutting their sockets down); this
/// only bounds the wait if that ever fails.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Servers listening inside a namespace, one per `(proto, port)`, on `[::]`
/// with `IPV6_V6ONLY` off, so that both IPv4 and IPv6 clients reach them on
/// every address of the namespace.
///
/// * TCP accepts each connection and closes it at once: a completed
///   handshake is all a firewall probe needs to see.
/// * UDP echoes every datagram back to its sender, from the address the
///   datagram was sent to (as a SIP server bound to its addresses would), so
///   the reply matches the flow's conntrack entry and a connected client
///   socket accepts it.
///
/// Dropping the `Listener` stops the server threads and closes the sockets.
pub struct Listener {
    stop: Arc<AtomicBool>,
    /// Duplicates of the server sockets, used only to shut them down:
    /// `shutdown(2)` acts on the socket, not on one descriptor, and wakes a
    /// thread blocked in `accept` or `recvmsg` on it.
    sockets: Vec<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
    bound: Vec<(Proto, u16)>,
}

impl Listener {
    /// Binds all `ports` inside `ns`, then serves them on background threads.
    /// Port 0 binds an ephemeral port; [`Listener::bound`] tells which.
    pub fn start(ns: &Netns, ports: &[(Proto, u16)]) -> Result<Listener> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut listener = Listener {
            stop,
            sockets: Vec::new(),
            threads: Vec::new(),
            bound: Vec::new(),
        };
        // Sockets are created inside the namespace and keep it; the threads
        // serving them can run anywhere.
        let sockets = ns.try_enter(|| {
            ports
                .iter()
                .map(|&(proto, port)| {
                    bind_dual_stack(proto, port)
                        .with_context(|| {
                            format!("cannot listen on {proto}/{port} in {}", ns.name())
                        })
                        .map(|fd| (proto, fd))
                })
                .collect::<Result<Vec<_>>>()
        })??;
        // On an error below, dropping `listener` stops what was started.
        for (proto, fd) in sockets {
            listener.sockets.push(fd.try_clone()?);
            let stop = Arc::clone(&listener.stop);
            let (port, thread) = match proto {
                Proto::Tcp => {
                    let socket = TcpListener::from(fd);
                    let port = socket.local_addr()?.port();
                    let name = format!("tcp-{port}-{}", ns.name());
                    let thread = thread::Builder::new()
                        .name(name)
                        .spawn(move || serve_tcp(&socket, &stop))?;
                    (port, thread)
                }
                Proto::Udp => {
                    let socket = UdpSocket::from(fd);
                    let port = socket.local_addr()?.port();
                    let name = format!("udp-{port}-{}", ns.name());
                    let thread = thread::Builder::new()
                        .name(name)
                        .spawn(move || serve_udp(&socket, &stop))?;
                    (port, thread)
                }
            };
            listener.threads.push(thread);
            listener.bound.push((proto, port));
        }
        Ok(listener)
    }

    /// The `(proto, port)` pairs being served, with ephemeral ports resolved.
    pub fn bound(&self) -> &[(Proto, u16)] {
        &self.bound
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for fd in &self.sockets {
            // On Linux this wakes `accept` (EINVAL) and `recvmsg` (0 bytes);
            // for unconnected UDP it reports ENOTCONN but still wakes.
            let _ = socket::shutdown(fd.as_raw_fd(), Shutdown::Both);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

/// A socket bound to `[::]:port`, dual-stack, listening if TCP.
fn bind_dual_stack(proto: Proto, port: u16) -> Result<OwnedFd> {
    let ty = match proto {
        Proto::Tcp => SockType::Stream,
        Proto::Udp => SockType::Datagram,
    };
    let fd = socket::socket(AddressFamily::Inet6, ty, SockFlag::SOCK_CLOEXEC, None)?;
    // Explicit, not left to the namespace's net.ipv6.bindv6only.
    socket::setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    let timeout = TimeVal::new(0, POLL_INTERVAL.as_micros() as _);
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)?;
    let any = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    socket::bind(fd.as_raw_fd(), &any)?;
    match proto {
        Proto::Tcp => socket::listen(&fd, Backlog::MAXCONN)?,
        Proto::Udp => socket::setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true)?,
    }
    Ok(fd)
}

fn serve_tcp(socket: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match socket.accept() {
            // Dropping the stream closes the connection right away.
            Ok((stream, _peer)) => drop(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            // E.g. ECONNABORTED for a client that gave up; or EINVAL after
            // shutdown, when `stop` is already set.
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn serve_udp(socket: &UdpSocket, stop: &AtomicBool) {
    let fd = socket.as_raw_fd();
    let mut buf = vec![0u8; 65536];
    let mut cmsg_buf = nix::cmsg_space!(libc::in6_pktinfo);
    while !stop.load(Ordering::SeqCst) {
        match receive(fd, &mut buf, &mut cmsg_buf) {
            Ok(Some((len, peer, local))) => {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                echo(fd, &buf[..len], &peer, local);
            }
            Ok(None) | Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// One datagram: its length, sender, and the local address it was sent to.
type Datagram = (usize, SockaddrIn6, Option<libc::in6_addr>);

fn receive(fd: RawFd, buf: &mut [u8], cmsg_buf: &mut [u8]) -> nix::Result<Option<Datagram>> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = socket::recvmsg::<SockaddrIn6>(fd, &mut iov, Some(cmsg_buf), MsgFlags::empty())?;
    let Some(peer) = msg.address else {
        return Ok(None);
    };
    // For IPv4 senders on this dual-stack socket the kernel reports the
    // destination as an IPv4-mapped IPv6 address.
    let local = msg.cmsgs()?.find_map(|cmsg| match cmsg {
        ControlMessageOwned::Ipv6PacketInfo(info) => Some(info.ipi6_addr),
        _ => None,
    });
    Ok(Some((msg.bytes, peer, local)))
}

fn echo(fd: RawFd, payload: &[u8], peer: &SockaddrIn6, local: Option<libc::in6_addr>) {
    // Source address pinned to where the datagram went; interface left to
    // routing (index 0).
    let info = local.map(|addr| libc::in6_pktinfo {
        ipi6_addr: addr,
        ipi6_ifindex: 0,
    });
    let cmsgs: Vec<ControlMessage<'_>> = info.iter().map(ControlMessage::Ipv6PacketInfo).collect();
    // A lost echo is what a probe through a firewall sees anyway; the client
    // will report it.
    let _ = socket::sendmsg(
        fd,
        &[IoSlice::new(payload)],
        &cmsgs,
        MsgFlags::empty(),
        Some(peer),
    );
}
