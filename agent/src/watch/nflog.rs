//! The NFLOG group the ruleset copies SIP packets to, read over raw netlink.
//!
//! Pure Rust (`netlink-sys` + `netlink-packet-netfilter`) rather than FFI to
//! libnetfilter_log: no C library to install on the PBX, and the parsing of
//! kernel messages is memory-safe. The socket is blocking with a short receive
//! timeout so the reading thread can also keep time.

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    config_request, ConfigCmd, ConfigMode, PacketNla, ULogMessage,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::constants::NETLINK_NETFILTER;
use netlink_sys::Socket;
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

/// Kernel buffer for copies waiting to be read: a flood fills it instead of
/// the agent's memory, and the overflow is counted (ENOBUFS).
const RCVBUF: usize = 8 << 20;

/// One copied packet.
pub struct Copied<'a> {
    /// The rule's log prefix (which way the packet went, or why it was logged).
    pub prefix: &'a [u8],
    /// From the network header on.
    pub payload: &'a [u8],
}

pub struct Nflog {
    sock: Socket,
    buf: Vec<u8>,
    group: u16,
}

/// What one read brought.
pub enum Read {
    Packets(usize),
    /// Nothing within the timeout.
    Idle,
    /// The kernel dropped copies because we were too slow.
    Overrun,
}

/// A netfilter netlink socket with a large receive buffer (a flood fills it
/// instead of the agent's memory) and a receive timeout, so the reading thread
/// also keeps time. Shared with the NFQUEUE reader.
pub(super) fn socket(timeout: Duration) -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    // Best effort: without CAP_NET_ADMIN's rmem override the kernel caps it.
    let _ = sock.set_rx_buf_sz(RCVBUF);
    nix::sys::socket::setsockopt(
        &sock.as_fd(),
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros() as i64),
    )
    .map_err(io::Error::from)?;
    Ok(sock)
}

impl Nflog {
    /// Binds `group`. Only one listener per group and namespace is allowed: a
    /// second agent (or ulogd) gets a clear error.
    pub fn open(group: u16, timeout: Duration) -> io::Result<Nflog> {
        let sock = socket(timeout)?;
        let mut nflog = Nflog {
            sock,
            buf: vec![0; 1 << 17],
            group,
        };
        nflog.configure(vec![ConfigCmd::Bind.into()]).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot bind NFLOG group {group} (is another agent or ulogd using it?): {e}"
                ),
            )
        })?;
        nflog.configure(vec![ConfigMode::new(
            0xffff,
            netlink_packet_netfilter::nflog::CopyMode::Packet,
        )
        .into()])?;
        Ok(nflog)
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn configure(
        &mut self,
        nlas: Vec<netlink_packet_netfilter::nflog::ConfigNla>,
    ) -> io::Result<()> {
        let req = config_request(NetfilterProtoFamily::Unspec, self.group, nlas);
        let mut out = vec![0; req.header.length as usize];
        req.serialize(&mut out[..]);
        self.sock.send(&out, 0)?;
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&self.buf[..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            match msg.payload {
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(()),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    }
                }
                // A copy that raced the acknowledgement: not ours to judge yet.
                _ => continue,
            }
        }
    }

    /// Reads what the kernel has and hands each copied packet to `f`.
    pub fn read(&mut self, mut f: impl FnMut(Copied<'_>)) -> io::Result<Read> {
        let n = match self.sock.recv(&mut &mut self.buf[..], 0) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Read::Idle)
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => return Ok(Read::Overrun),
            Err(e) => return Err(e),
        };
        let mut offset = 0;
        let mut packets = 0;
        while offset < n {
            let bytes = &self.buf[offset..n];
            let Ok(msg) = NetlinkMessage::<NetfilterMessage>::deserialize(bytes) else {
                break;
            };
            let len = msg.header.length as usize;
            if let NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
                ..
            }) = &msg.payload
            {
                let mut prefix: &[u8] = b"";
                let mut payload: &[u8] = b"";
                for nla in nlas {
                    match nla {
                        PacketNla::Prefix(p) => prefix = p.as_bytes(),
                        PacketNla::Payload(p) => payload = p,
                        _ => {}
                    }
                }
                if !payload.is_empty() {
                    packets += 1;
                    f(Copied { prefix, payload });
                }
            }
            if len == 0 {
                break;
            }
            // Netlink messages are 4-byte aligned.
            offset += (len + 3) & !3;
        }
        Ok(Read::Packets(packets))
    }
}
