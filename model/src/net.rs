//! Address helpers shared by the renderer and `explain`.

use ipnet::IpNet;
use serde::Serialize;
use std::net::IpAddr;

/// IPv4 or IPv6: every set exists once per family, because nftables sets are typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// The suffix of set names (`ban_v4`, `ban_v6`).
    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

/// Addresses are written with the IPv4-mapped IPv6 form folded to IPv4, so that
/// `::ffff:192.0.2.1` and `192.0.2.1` are one source everywhere.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Whether another host could see this one's traffic come from `addr`, so
/// that trusting it there means something: not loopback, link-local,
/// multicast, broadcast or unspecified, and written canonically (an
/// IPv4-mapped IPv6 address is refused: [`canonical`] first). The agent
/// reports only such addresses and the controller trusts only those.
pub fn is_reportable(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                // fe80::/10
                || (a.segments()[0] & 0xffc0) == 0xfe80
                || a.to_ipv4_mapped().is_some())
        }
    }
}

/// Parses `192.0.2.0/24`, `2001:db8::/32` or a bare address (a host route), and
/// refuses a prefix with host bits set: `10.0.0.1/8` is almost always a typo, and
/// silently widening or narrowing it would open or close the wrong hosts.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(canonical(addr)));
    }
    let net: IpNet = s
        .parse()
        .map_err(|_| format!("`{s}` is not an IPv4/IPv6 address or CIDR network"))?;
    if net.trunc() != net {
        return Err(format!(
            "`{s}` has host bits set; did you mean `{}`?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// A DNS host name as configurations write them: at most 253 bytes of dot
/// separated labels, each 1-63 of letters, digits, `-` (not first or last) and
/// `_` (seen in SRV-style and some internal names). No trailing dot.
pub fn is_host_name(s: &str) -> bool {
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    !s.is_empty() && s.len() <= 253 && s.split('.').all(label)
}

/// True when the two networks share at least one address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}
