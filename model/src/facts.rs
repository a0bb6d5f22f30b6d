//! What discovery learns from a PBX's own configuration: the ports it listens on,
//! its RTP range, the peers (trunks, branch offices, proxies) it talks to, and
//! the public addresses it tells them to use (behind NAT).
//! Every fact carries its provenance so `explain` can point at the line.

use crate::service::{PortRange, Proto};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// Which PBX the facts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PbxKind {
    Asterisk,
    FreeSwitch,
    Kamailio,
}

impl fmt::Display for PbxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PbxKind::Asterisk => "asterisk",
            PbxKind::FreeSwitch => "freeswitch",
            PbxKind::Kamailio => "kamailio",
        })
    }
}

/// Where a fact was read: `file:line`, the section (or XML element/name) and
/// what construct it was (`identify match`, `aor contact`, `gateway proxy`, ...).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Provenance {
    pub file: String,
    pub line: usize,
    pub section: String,
    pub what: String,
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.rsplit('/').next().unwrap_or(&self.file);
        write!(f, "{file}:{}, [{}] {}", self.line, self.section, self.what)
    }
}

/// SIP (and IAX2) transports as PBX configurations name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Ws,
    Wss,
    /// IAX2 (always UDP).
    Iax,
}

impl Transport {
    /// The layer-4 protocol the port is opened for.
    pub fn proto(self) -> Proto {
        match self {
            Transport::Udp | Transport::Iax => Proto::Udp,
            Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => Proto::Tcp,
        }
    }

    pub fn parse(s: &str) -> Option<Transport> {
        match s.trim().to_ascii_lowercase().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            "ws" => Some(Transport::Ws),
            "wss" => Some(Transport::Wss),
            "iax" | "iax2" => Some(Transport::Iax),
            _ => None,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
            Transport::Iax => "iax",
        })
    }
}

/// A port the PBX listens on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ListenPort {
    pub transport: Transport,
    pub port: u16,
    /// The bind address when the configuration names one (`0.0.0.0`/`::` = all).
    pub addr: Option<IpAddr>,
    pub provenance: Provenance,
}

/// How a peer is written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PeerTarget {
    Addr(IpAddr),
    Net(IpNet),
    /// A DNS name, resolved by the agent (A/AAAA, and SRV first when no port is
    /// given, as RFC 3263 says). `transport` is the hint from the URI or section.
    Host {
        name: String,
        port: Option<u16>,
        transport: Option<Transport>,
    },
}

impl fmt::Display for PeerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerTarget::Addr(a) => write!(f, "{a}"),
            PeerTarget::Net(n) => write!(f, "{n}"),
            PeerTarget::Host {
                name,
                port: Some(p),
                ..
            } => write!(f, "{name}:{p}"),
            PeerTarget::Host { name, .. } => f.write_str(name),
        }
    }
}

/// A trunk, branch office, proxy or dispatcher destination the PBX talks to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Peer {
    /// The trunk's or endpoint's name (section, gateway, dispatcher set).
    pub name: String,
    pub target: PeerTarget,
    pub provenance: Provenance,
}

/// The RTP port range with where it was configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtpRange {
    pub range: PortRange,
    pub provenance: Provenance,
}

/// An address the PBX advertises as its own to the outside, e.g. the public
/// address of the NAT it sits behind (pjsip `external_signaling_address`,
/// sip.conf `externip`, FreeSWITCH `ext-sip-ip`, Kamailio `advertise`). Its
/// other sites see its traffic come from there, so it is reported to the
/// controller with the host's own addresses. Never a port's business: only
/// `Addr` and `Host` targets (a port in the configuration is dropped).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublicAddress {
    pub target: PeerTarget,
    pub provenance: Provenance,
}

/// Everything discovery found in one PBX's configuration tree.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PbxFacts {
    pub kinds: Vec<PbxKind>,
    pub listen: Vec<ListenPort>,
    pub rtp: Option<RtpRange>,
    pub peers: Vec<Peer>,
    /// Facts stored by an agent before this field existed read as none.
    #[serde(default)]
    pub public: Vec<PublicAddress>,
}

impl PbxFacts {
    /// Merges facts of another PBX on the same host (e.g. Kamailio in front of Asterisk).
    pub fn merge(&mut self, other: PbxFacts) {
        self.kinds.extend(other.kinds);
        self.listen.extend(other.listen);
        if self.rtp.is_none() {
            self.rtp = other.rtp;
        }
        self.peers.extend(other.peers);
        self.public.extend(other.public);
    }

    /// Sorted and without duplicates, so two discoveries of the same tree compare equal.
    pub fn normalize(&mut self) {
        self.kinds.sort();
        self.kinds.dedup();
        self.listen.sort();
        self.listen
            .dedup_by(|a, b| a.transport == b.transport && a.port == b.port && a.addr == b.addr);
        self.peers.sort();
        self.peers
            .dedup_by(|a, b| a.name == b.name && a.target == b.target);
        self.public.sort();
        self.public.dedup_by(|a, b| a.target == b.target);
    }
}

/// A configuration file that could not be read: file, line and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct DiscoveryError {
    pub file: String,
    pub line: usize,
    pub message: String,
}
