//! The validated policy: what the agent enforces.

use crate::facts::{PbxFacts, Peer, PeerTarget, Transport};
use crate::responsive::Responsive;
use crate::service::{PortSpec, Proto, Service};
use crate::zone::Zone;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Where a value came from, so `explain` can point at the line that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: usize,
    /// The field path, e.g. `zones.local.networks[1]`.
    pub field: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} {}", self.file, self.line, self.field)
    }
}

/// A value with its origin. Equality ignores the origin: moving a line in the file
/// is not a change of policy.
#[derive(Debug, Clone)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T: PartialEq> PartialEq for Sourced<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

/// What is assigned to one zone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ZoneMembers {
    pub networks: Vec<Sourced<IpNet>>,
    pub interfaces: Vec<Sourced<String>>,
    /// DNS names whose addresses join the zone; resolved by the agent into the zone's
    /// dynamic set, never written into rules.
    pub hosts: Vec<Sourced<String>>,
}

/// Lock-out protection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Lockout {
    /// Ports whose established TCP sessions, found when the agent first starts, have
    /// their peers accepted like management addresses.
    pub ssh_ports: Vec<u16>,
    /// How long those first-start sessions stay accepted.
    pub session_grace: Duration,
}

impl Default for Lockout {
    fn default() -> Self {
        Lockout {
            ssh_ports: vec![22],
            session_grace: Duration::from_secs(24 * 3600),
        }
    }
}

/// A complete, validated policy. Build one with [`crate::parse_policy`]; an empty
/// document yields the safe default (default-deny, catalogue services per zone).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Accepted before anything else, bans included: the operator can never lock
    /// themselves out from these.
    pub management: Vec<Sourced<IpNet>>,
    pub zones: BTreeMap<Zone, ZoneMembers>,
    pub services: Vec<Service>,
    pub lockout: Lockout,
    /// The responsive firewall on the SIP/IAX2 ports.
    pub responsive: Responsive,
    /// What discovery found in the PBX's configuration, once merged in with
    /// [`Policy::with_facts`].
    pub discovered: Option<PbxFacts>,
    /// Per-user rules (`[users]`): extension → names of the services opened for
    /// the address it registers from, while the registration lives.
    pub users: BTreeMap<String, Vec<String>>,
}

impl Policy {
    pub fn members(&self, zone: Zone) -> Option<&ZoneMembers> {
        self.zones.get(&zone)
    }

    pub fn networks(&self, zone: Zone) -> impl Iterator<Item = &Sourced<IpNet>> {
        self.members(zone)
            .into_iter()
            .flat_map(|m| m.networks.iter())
    }

    pub fn interfaces(&self, zone: Zone) -> impl Iterator<Item = &Sourced<String>> {
        self.members(zone)
            .into_iter()
            .flat_map(|m| m.interfaces.iter())
    }

    pub fn hosts(&self, zone: Zone) -> impl Iterator<Item = &Sourced<String>> {
        self.members(zone).into_iter().flat_map(|m| m.hosts.iter())
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Ports of the named services, merged per protocol.
    fn ports_of(&self, names: &[&str]) -> Vec<PortSpec> {
        let mut ports: Vec<PortSpec> = self
            .services
            .iter()
            .filter(|s| names.contains(&s.name.as_str()))
            .flat_map(|s| s.ports.iter().copied())
            .collect();
        ports.sort();
        ports.dedup();
        ports
    }

    /// Ports that carry SIP in clear text (UDP and TCP): what the SIP watch reads.
    pub fn sip_watch_ports(&self) -> Vec<PortSpec> {
        self.ports_of(&["sip-udp", "sip-tcp"])
    }

    /// Every signalling port (SIP in any transport, IAX2): what the rate tiers guard.
    pub fn signalling_ports(&self) -> Vec<PortSpec> {
        self.ports_of(&["sip-udp", "sip-tcp", "sip-tls", "iax2"])
    }

    /// The configured network of `zone` that holds `addr`, if any.
    pub fn network_of(&self, zone: Zone, addr: IpAddr) -> Option<&Sourced<IpNet>> {
        self.networks(zone).find(|n| n.value.contains(&addr))
    }

    /// The policy with what the PBX's own configuration needs: the SIP-family
    /// services listen on the discovered ports (unless the operator wrote their
    /// ports), RTP uses the discovered range, and the discovered peers become
    /// trunks. Facts of no PBX at all change nothing.
    pub fn with_facts(mut self, facts: &PbxFacts) -> Policy {
        if facts.kinds.is_empty() {
            return self;
        }
        let by_transport: [(&str, &[Transport]); 5] = [
            ("sip-udp", &[Transport::Udp]),
            ("sip-tcp", &[Transport::Tcp]),
            ("sip-tls", &[Transport::Tls]),
            ("webrtc", &[Transport::Ws, Transport::Wss]),
            ("iax2", &[Transport::Iax]),
        ];
        for (name, transports) in by_transport {
            let mut ports: Vec<PortSpec> = facts
                .listen
                .iter()
                .filter(|l| transports.contains(&l.transport))
                .map(|l| PortSpec::new(l.transport.proto(), l.port, l.port))
                .collect();
            ports.sort();
            ports.dedup();
            if let Some(s) = self
                .services
                .iter_mut()
                .find(|s| s.name == name && !s.ports_configured)
            {
                s.ports = ports;
            }
        }
        if let Some(rtp) = &facts.rtp {
            if let Some(s) = self
                .services
                .iter_mut()
                .find(|s| s.name == "rtp" && !s.ports_configured)
            {
                s.ports = vec![PortSpec::new(Proto::Udp, rtp.range.first, rtp.range.last)];
            }
        }
        self.discovered = Some(facts.clone());
        self
    }

    /// Discovered peers written as addresses or networks (the static trunk set).
    pub fn trunk_networks(&self) -> Vec<IpNet> {
        let nets: Vec<IpNet> = self
            .peers()
            .filter_map(|p| match &p.target {
                PeerTarget::Addr(a) => Some(IpNet::from(crate::net::canonical(*a))),
                PeerTarget::Net(n) => Some(n.trunc()),
                PeerTarget::Host { .. } => None,
            })
            .collect();
        // Interval sets refuse overlapping elements; two trunks may share a range.
        IpNet::aggregate(&nets)
    }

    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.discovered.iter().flat_map(|f| f.peers.iter())
    }

    /// The discovered peer written as (or containing) `addr`.
    pub fn peer_of(&self, addr: IpAddr) -> Option<&Peer> {
        self.peers().find(|p| match &p.target {
            PeerTarget::Addr(a) => crate::net::canonical(*a) == addr,
            PeerTarget::Net(n) => n.contains(&addr),
            PeerTarget::Host { .. } => false,
        })
    }

    /// The discovered peers written as the host name `name`.
    pub fn peers_named<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Peer> + 'a {
        self.peers()
            .filter(move |p| matches!(&p.target, PeerTarget::Host { name, .. } if name.eq_ignore_ascii_case(host)))
    }

    /// The management entry that holds `addr`, if any.
    pub fn management_of(&self, addr: IpAddr) -> Option<&Sourced<IpNet>> {
        self.management.iter().find(|n| n.value.contains(&addr))
    }
}

#[cfg(test)]
mod tests {
    use crate::facts::*;
    use crate::service::{PortRange, PortSpec, Proto};
    use crate::{explain, parse_policy, Decision, DynSet, DynamicState, Query, Stage, TimedAddr};

    fn prov(line: usize, what: &str) -> Provenance {
        Provenance {
            file: "/etc/asterisk/pjsip.conf".into(),
            line,
            section: "voipms".into(),
            what: what.into(),
        }
    }

    fn facts() -> PbxFacts {
        PbxFacts {
            kinds: vec![PbxKind::Asterisk],
            listen: vec![
                ListenPort {
                    transport: Transport::Udp,
                    port: 5160,
                    addr: None,
                    provenance: prov(3, "transport bind"),
                },
                ListenPort {
                    transport: Transport::Wss,
                    port: 8089,
                    addr: None,
                    provenance: prov(9, "transport bind"),
                },
            ],
            rtp: Some(RtpRange {
                range: PortRange {
                    first: 12000,
                    last: 12999,
                },
                provenance: prov(2, "rtpstart"),
            }),
            peers: vec![
                Peer {
                    name: "voipms".into(),
                    target: PeerTarget::Addr("192.0.2.7".parse().unwrap()),
                    provenance: prov(42, "identify match"),
                },
                Peer {
                    name: "office".into(),
                    target: PeerTarget::Net("198.51.100.0/24".parse().unwrap()),
                    provenance: prov(50, "identify match"),
                },
                Peer {
                    name: "office2".into(),
                    target: PeerTarget::Net("198.51.100.128/25".parse().unwrap()),
                    provenance: prov(51, "identify match"),
                },
                Peer {
                    name: "carrier".into(),
                    target: PeerTarget::Host {
                        name: "sip.carrier.test".into(),
                        port: None,
                        transport: None,
                    },
                    provenance: prov(60, "registration server_uri"),
                },
            ],
            public: vec![],
        }
    }

    #[test]
    fn discovered_ports_replace_the_catalogue_unless_configured() {
        let p = parse_policy(
            "[[services]]\nname = \"sip-tcp\"\nports = [\"5070/tcp\"]\n",
            "a.toml",
        )
        .unwrap()
        .with_facts(&facts());
        assert_eq!(
            p.service("sip-udp").unwrap().ports,
            vec![PortSpec::new(Proto::Udp, 5160, 5160)]
        );
        assert_eq!(
            p.service("sip-tcp").unwrap().ports,
            vec![PortSpec::new(Proto::Tcp, 5070, 5070)],
            "configured ports win"
        );
        assert!(
            p.service("sip-tls").unwrap().ports.is_empty(),
            "no TLS transport: closed"
        );
        assert!(p.service("iax2").unwrap().ports.is_empty());
        assert_eq!(
            p.service("webrtc").unwrap().ports,
            vec![PortSpec::new(Proto::Tcp, 8089, 8089)]
        );
        assert_eq!(
            p.service("rtp").unwrap().ports,
            vec![PortSpec::new(Proto::Udp, 12000, 12999)]
        );
        assert!(
            p.service("ssh").unwrap().matches(Proto::Tcp, 22),
            "non-PBX services untouched"
        );
        let none = parse_policy("", "a.toml").unwrap();
        assert_eq!(
            none.clone().with_facts(&PbxFacts::default()),
            none,
            "no PBX found: nothing changes"
        );
    }

    #[test]
    fn trunk_networks_are_aggregated_and_explained() {
        let p = parse_policy("", "a.toml").unwrap().with_facts(&facts());
        let nets: Vec<String> = p.trunk_networks().iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, vec!["192.0.2.7/32", "198.51.100.0/24"]);
        let q = |a: &str| Query {
            addr: a.parse().unwrap(),
            iface: None,
            port: Some((Proto::Udp, 5160)),
        };
        let v = explain(&p, &DynamicState::default(), &q("192.0.2.7"));
        assert_eq!((v.decision, v.stage), (Decision::Accept, Stage::Trunks));
        assert!(
            v.reason
                .contains("trunk \"voipms\" (pjsip.conf:42, [voipms] identify match 192.0.2.7)"),
            "{v}"
        );
        let mut d = DynamicState::default();
        d.insert(
            DynSet::Trunk,
            TimedAddr {
                addr: "203.0.113.9".parse().unwrap(),
                ttl: None,
                expires: None,
                comment: Some("sip.carrier.test".into()),
            },
        );
        let v = explain(&p, &d, &q("203.0.113.9"));
        assert!(v.reason.contains("trunk \"carrier\" (pjsip.conf:60, [voipms] registration server_uri sip.carrier.test -> 203.0.113.9)"), "{v}");
        let v = explain(
            &p,
            &d,
            &Query {
                port: Some((Proto::Tcp, 22)),
                ..q("203.0.113.9")
            },
        );
        assert_eq!(
            (v.decision, v.stage),
            (Decision::Drop, Stage::Zones),
            "a trunk gets VoIP, not SSH"
        );
    }
}
