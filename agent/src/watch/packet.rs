//! IPv4/IPv6 + UDP/TCP headers of a copied packet, read in place.
//!
//! NFLOG hands over the packet from its network header on. Only what the watch
//! needs is decoded: addresses, ports, TCP sequence and flags, and the payload.
//! Anything truncated or odd is an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Udp,
    Tcp {
        seq: u32,
        syn: bool,
        fin: bool,
        rst: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub l4: L4,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet too short for its {0} header")]
    Truncated(&'static str),
    #[error("not IPv4 or IPv6 (version {0})")]
    Version(u8),
    #[error("protocol {0} is neither UDP nor TCP")]
    Protocol(u8),
    #[error("a non-first fragment")]
    Fragment,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Decodes a packet that starts at its IP header.
pub fn decode(buf: &[u8]) -> Result<Packet<'_>, PacketError> {
    let version = buf.first().ok_or(PacketError::Truncated("IP"))? >> 4;
    let (src, dst, proto, l4) = match version {
        4 => {
            if buf.len() < 20 {
                return Err(PacketError::Truncated("IPv4"));
            }
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            let total = usize::from(be16(buf, 2)).min(buf.len());
            if ihl < 20 || total < ihl {
                return Err(PacketError::Truncated("IPv4"));
            }
            if be16(buf, 6) & 0x1fff != 0 {
                return Err(PacketError::Fragment);
            }
            let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
            let dst = Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
            (IpAddr::V4(src), IpAddr::V4(dst), buf[9], &buf[ihl..total])
        }
        6 => {
            if buf.len() < 40 {
                return Err(PacketError::Truncated("IPv6"));
            }
            let total = (40 + usize::from(be16(buf, 4))).min(buf.len());
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&buf[8..24]);
            dst.copy_from_slice(&buf[24..40]);
            let (proto, offset) = skip_extensions(buf, buf[6], 40, total)?;
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                proto,
                &buf[offset..total],
            )
        }
        v => return Err(PacketError::Version(v)),
    };
    match proto {
        17 => {
            if l4.len() < 8 {
                return Err(PacketError::Truncated("UDP"));
            }
            Ok(Packet {
                src: SocketAddr::new(src, be16(l4, 0)),
                dst: SocketAddr::new(dst, be16(l4, 2)),
                l4: L4::Udp,
                payload: &l4[8..],
            })
        }
        6 => {
            if l4.len() < 20 {
                return Err(PacketError::Truncated("TCP"));
            }
            let offset = usize::from(l4[12] >> 4) * 4;
            if offset < 20 || offset > l4.len() {
                return Err(PacketError::Truncated("TCP"));
            }
            let flags = l4[13];
            Ok(Packet {
                src: SocketAddr::new(src, be16(l4, 0)),
                dst: SocketAddr::new(dst, be16(l4, 2)),
                l4: L4::Tcp {
                    seq: u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
                    fin: flags & 0x01 != 0,
                    syn: flags & 0x02 != 0,
                    rst: flags & 0x04 != 0,
                },
                payload: &l4[offset..],
            })
        }
        p => Err(PacketError::Protocol(p)),
    }
}

/// Walks IPv6 extension headers to the transport header.
fn skip_extensions(
    buf: &[u8],
    mut next: u8,
    mut at: usize,
    total: usize,
) -> Result<(u8, usize), PacketError> {
    for _ in 0..8 {
        match next {
            // Hop-by-hop, routing, destination options.
            0 | 43 | 60 => {
                if at + 2 > total {
                    return Err(PacketError::Truncated("IPv6 extension"));
                }
                next = buf[at];
                at += (usize::from(buf[at + 1]) + 1) * 8;
            }
            44 => {
                if at + 8 > total {
                    return Err(PacketError::Truncated("IPv6 fragment"));
                }
                if be16(buf, at + 2) & 0xfff8 != 0 {
                    return Err(PacketError::Fragment);
                }
                next = buf[at];
                at += 8;
            }
            _ => break,
        }
    }
    if at > total {
        return Err(PacketError::Truncated("IPv6 extension"));
    }
    Ok((next, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(payload: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        let total = (20 + 8 + payload.len()) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&5062u16.to_be_bytes());
        p.extend_from_slice(&5060u16.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn udp_over_ipv4() {
        let buf = udp4(b"OPTIONS sip:x SIP/2.0\r\n\r\n");
        let p = decode(&buf).unwrap();
        assert_eq!(p.src, "10.0.0.2:5062".parse().unwrap());
        assert_eq!(p.dst, "10.0.0.1:5060".parse().unwrap());
        assert_eq!(p.l4, L4::Udp);
        assert!(p.payload.starts_with(b"OPTIONS"));
    }

    #[test]
    fn tcp_over_ipv6_with_a_destination_option() {
        let mut b = vec![0x60, 0, 0, 0, 0, 0, 60, 64];
        b.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5060u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&7u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18;
        b.extend_from_slice(&tcp);
        b.extend_from_slice(b"REGISTER");
        let len = (b.len() - 40) as u16;
        b[4..6].copy_from_slice(&len.to_be_bytes());
        let p = decode(&b).unwrap();
        assert_eq!(p.src.port(), 40000);
        assert!(matches!(
            p.l4,
            L4::Tcp {
                seq: 7,
                syn: false,
                ..
            }
        ));
        assert_eq!(p.payload, b"REGISTER");
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[0x45; 19]).is_err());
        assert!(decode(&[0x60; 39]).is_err());
        assert_eq!(decode(&[0x15; 40]), Err(PacketError::Version(1)));
        for len in 0..60 {
            let buf = udp4(b"x");
            let _ = decode(&buf[..len.min(buf.len())]);
            let mut v6 = vec![0x60u8; len];
            v6.iter_mut().enumerate().for_each(|(i, b)| *b ^= i as u8);
            let _ = decode(&v6);
        }
    }
}
