//! The catalogue of services a PBX host offers, and how ports are written.

use crate::zone::Zone;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// IANA protocol number, as `meta l4proto` sees it.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => Err(format!("unknown protocol `{other}` (expected tcp or udp)")),
        }
    }
}

/// An inclusive port range; a single port is `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// `5060/udp`, `10000-20000/udp`: the form ports are written in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortSpec {
    pub proto: Proto,
    pub range: PortRange,
}

impl PortSpec {
    pub const fn new(proto: Proto, first: u16, last: u16) -> Self {
        PortSpec {
            proto,
            range: PortRange { first, last },
        }
    }

    pub fn matches(&self, proto: Proto, port: u16) -> bool {
        self.proto == proto && self.range.contains(port)
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.range, self.proto)
    }
}

impl FromStr for PortSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ports, proto) = s.trim().split_once('/').ok_or_else(|| {
            format!("`{s}` should be PORT/PROTO or FIRST-LAST/PROTO, e.g. 5060/udp")
        })?;
        let proto: Proto = proto.parse()?;
        let port = |p: &str| -> Result<u16, String> {
            let n: u32 = p
                .trim()
                .parse()
                .map_err(|_| format!("`{p}` in `{s}` is not a port number"))?;
            if !(1..=65535).contains(&n) {
                return Err(format!("port {n} in `{s}` is out of range (1-65535)"));
            }
            Ok(n as u16)
        };
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(ports)?;
                (p, p)
            }
        };
        if first > last {
            return Err(format!("range `{ports}` in `{s}` runs backwards"));
        }
        Ok(PortSpec::new(proto, first, last))
    }
}

/// A named set of ports opened per zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub description: String,
    pub ports: Vec<PortSpec>,
    /// Zones this service is open to. `trusted` is implied (it gets everything) and
    /// `blocked` is never allowed.
    pub zones: BTreeSet<Zone>,
    /// SIP and IAX2: signalling that a registered phone needs, so known-good sources
    /// get it whatever their zone, and the responsive tiers will watch it.
    pub voip: bool,
    /// The operator wrote this service's ports; discovery then leaves them alone.
    #[serde(default)]
    pub ports_configured: bool,
}

impl Service {
    pub fn matches(&self, proto: Proto, port: u16) -> bool {
        self.ports.iter().any(|p| p.matches(proto, port))
    }

    pub fn open_in(&self, zone: Zone) -> bool {
        zone == Zone::Trusted || self.zones.contains(&zone)
    }
}

use Proto::{Tcp, Udp};
use Zone::{Internet, Local, Other};

/// One catalogue entry: name, description, ports, default zones, voip.
type Entry = (
    &'static str,
    &'static str,
    &'static [PortSpec],
    &'static [Zone],
    bool,
);

/// The built-in catalogue and its default zones.
///
/// SIP, IAX2 and RTP face the internet by default because remote phones and trunks
/// need them and the responsive firewall guards them; everything administrative is
/// LAN-only, the user portal and WebRTC also reach the `other` zone (VPNs, branch
/// DMZs), mirroring what PBX operators expect from the FreePBX defaults.
const CATALOGUE: &[Entry] = &[
    (
        "sip-udp",
        "SIP signalling over UDP",
        &[PortSpec::new(Udp, 5060, 5060)],
        &[Local, Other, Internet],
        true,
    ),
    (
        "sip-tcp",
        "SIP signalling over TCP",
        &[PortSpec::new(Tcp, 5060, 5060)],
        &[Local, Other, Internet],
        true,
    ),
    (
        "sip-tls",
        "SIP signalling over TLS",
        &[PortSpec::new(Tcp, 5061, 5061)],
        &[Local, Other, Internet],
        true,
    ),
    (
        "iax2",
        "IAX2 trunks and phones",
        &[PortSpec::new(Udp, 4569, 4569)],
        &[Local, Other, Internet],
        true,
    ),
    (
        "rtp",
        "RTP media",
        &[PortSpec::new(Udp, 10000, 20000)],
        &[Local, Other, Internet],
        true,
    ),
    (
        "ssh",
        "SSH administration",
        &[PortSpec::new(Tcp, 22, 22)],
        &[Local],
        false,
    ),
    (
        "admin",
        "PBX admin web interface",
        &[PortSpec::new(Tcp, 80, 80), PortSpec::new(Tcp, 443, 443)],
        &[Local],
        false,
    ),
    (
        "ucp",
        "User control panel (user portal)",
        &[PortSpec::new(Tcp, 81, 81), PortSpec::new(Tcp, 4443, 4443)],
        &[Local, Other],
        false,
    ),
    (
        "webrtc",
        "WebRTC over secure websocket",
        &[PortSpec::new(Tcp, 8089, 8089)],
        &[Local, Other],
        false,
    ),
    (
        "provisioning",
        "Phone provisioning over HTTP",
        &[PortSpec::new(Tcp, 83, 83)],
        &[Local],
        false,
    ),
    (
        "tftp",
        "Phone provisioning over TFTP",
        &[PortSpec::new(Udp, 69, 69)],
        &[Local],
        false,
    ),
];

/// The built-in services with their default zones, in a stable order.
pub fn catalogue() -> Vec<Service> {
    CATALOGUE
        .iter()
        .map(|(name, description, ports, zones, voip)| Service {
            name: (*name).to_string(),
            description: (*description).to_string(),
            ports: ports.to_vec(),
            zones: zones.iter().copied().collect(),
            voip: *voip,
            ports_configured: false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_parse_and_reject() {
        assert_eq!(
            "5060/udp".parse::<PortSpec>().unwrap(),
            PortSpec::new(Udp, 5060, 5060)
        );
        assert_eq!(
            "10000-20000/UDP".parse::<PortSpec>().unwrap(),
            PortSpec::new(Udp, 10000, 20000)
        );
        assert!("70000/tcp"
            .parse::<PortSpec>()
            .unwrap_err()
            .contains("out of range"));
        assert!("0/tcp"
            .parse::<PortSpec>()
            .unwrap_err()
            .contains("out of range"));
        assert!("20-10/tcp"
            .parse::<PortSpec>()
            .unwrap_err()
            .contains("backwards"));
        assert!("80/sctp"
            .parse::<PortSpec>()
            .unwrap_err()
            .contains("protocol"));
        assert!("80".parse::<PortSpec>().unwrap_err().contains("PORT/PROTO"));
    }

    #[test]
    fn catalogue_has_the_documented_ports() {
        let c = catalogue();
        let find = |n: &str| c.iter().find(|s| s.name == n).unwrap();
        assert!(find("sip-udp").matches(Udp, 5060));
        assert!(find("sip-tls").matches(Tcp, 5061));
        assert!(find("iax2").matches(Udp, 4569));
        assert!(find("rtp").matches(Udp, 10000) && find("rtp").matches(Udp, 20000));
        assert!(!find("rtp").matches(Udp, 20001));
        assert!(find("admin").matches(Tcp, 443));
        assert!(find("ucp").matches(Tcp, 4443));
        assert!(find("webrtc").matches(Tcp, 8089));
        assert!(find("provisioning").matches(Tcp, 83));
        assert!(find("tftp").matches(Udp, 69));
        assert!(find("ssh").open_in(Zone::Local) && !find("ssh").open_in(Zone::Internet));
    }
}
