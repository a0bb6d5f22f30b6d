//! Why an address is allowed or blocked: the input pipeline, walked for one source.

use crate::dynamic::{DynSet, DynamicState, TimedAddr};
use crate::pipeline::{Stage, INPUT_PIPELINE};
use crate::policy::Policy;
use crate::service::Proto;
use crate::zone::Zone;
use std::fmt;
use std::net::IpAddr;

/// The question: a new connection or datagram from `addr`, optionally to one port,
/// optionally arriving on a known interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub addr: IpAddr,
    pub iface: Option<String>,
    pub port: Option<(Proto, u16)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Accept,
    Drop,
    /// No port was asked about and the source's zone decides per service.
    PerService,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decision::Accept => "ALLOWED",
            Decision::Drop => "BLOCKED",
            Decision::PerService => "PER SERVICE",
        })
    }
}

/// The answer: what decides, at which stage, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub decision: Decision,
    pub stage: Stage,
    /// The source's zone, when the zone stage was reached.
    pub zone: Option<Zone>,
    pub reason: String,
    /// Services open to the source from the deciding stage (zone or known-good).
    pub open_services: Vec<String>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at stage {}: {}",
            self.decision,
            self.stage.as_str(),
            self.reason
        )?;
        if !self.open_services.is_empty() {
            write!(f, "\n  open: {}", self.open_services.join(", "))?;
        }
        Ok(())
    }
}

fn element_note(e: &TimedAddr) -> String {
    let mut s = String::new();
    if let Some(c) = &e.comment {
        s.push_str(&format!(" \"{c}\""));
    }
    if let Some(left) = e.expires {
        s.push_str(&format!(" (expires in {}s)", left.as_secs()));
    }
    s
}

/// Trunks and known-good sources get the VoIP services: per service when no
/// port was asked, accepted when the port is one of them, and on to the next
/// stage otherwise.
fn voip_verdict(policy: &Policy, q: &Query, stage: Stage, who: String) -> Option<Verdict> {
    let voip = policy.services.iter().filter(|s| s.voip);
    let base = Verdict {
        decision: Decision::PerService,
        stage,
        zone: None,
        reason: who,
        open_services: Vec::new(),
    };
    match q.port {
        None => Some(Verdict {
            open_services: voip.map(|s| s.name.clone()).collect(),
            ..base
        }),
        Some((proto, port)) => {
            let s = voip.clone().find(|s| s.matches(proto, port))?;
            Some(Verdict {
                decision: Decision::Accept,
                reason: format!("{}, service {}", base.reason, s.name),
                ..base
            })
        }
    }
}

/// The trunk `addr` belongs to: written as an address or network in the PBX's
/// configuration, or a resolved address of a trunk's host name.
fn trunk_of(policy: &Policy, dynamic: &DynamicState, addr: IpAddr) -> Option<String> {
    if let Some(peer) = policy.peer_of(addr) {
        return Some(format!(
            "trunk \"{}\" ({} {})",
            peer.name, peer.provenance, peer.target
        ));
    }
    let e = dynamic.find(DynSet::Trunk, addr)?;
    let note = element_note(e);
    // The resolver writes the names that resolve to the address, comma separated.
    let names = e.comment.as_deref().unwrap_or_default();
    let named = names
        .split(',')
        .map(str::trim)
        .find_map(|host| Some((host, policy.peers_named(host).next()?)));
    Some(match named {
        Some((host, peer)) => format!(
            "trunk \"{}\" ({} {host} -> {addr}){note}",
            peer.name, peer.provenance
        ),
        None => format!("set trunk_dyn: resolved trunk address{note}"),
    })
}

/// Walks [`INPUT_PIPELINE`] for `q` over the policy and the live dynamic sets.
/// The responsive firewall stands between a source the zones accept and the
/// PBX's signalling ports: say so, with its numbers.
fn guard_note(policy: &Policy, q: &Query) -> Option<String> {
    let r = &policy.responsive;
    let (proto, port) = q.port?;
    if !r.enabled
        || !policy
            .signalling_ports()
            .iter()
            .any(|p| p.matches(proto, port))
    {
        return None;
    }
    Some(format!(
        "; as a source without a registration it meets the rate tier ({}/s, burst {}) and the SIP watch, which bans attack tools",
        r.tiers.rate, r.tiers.burst
    ))
}

pub fn explain(policy: &Policy, dynamic: &DynamicState, q: &Query) -> Verdict {
    let addr = crate::net::canonical(q.addr);
    let verdict = |decision, stage, reason: String| Verdict {
        decision,
        stage,
        zone: None,
        reason,
        open_services: Vec::new(),
    };
    for stage in INPUT_PIPELINE {
        match stage {
            Stage::Loopback if addr.is_loopback() => {
                return verdict(
                    Decision::Accept,
                    stage,
                    "loopback traffic is always accepted".into(),
                )
            }
            Stage::Management => {
                if let Some(net) = policy.management_of(addr) {
                    return verdict(
                        Decision::Accept,
                        stage,
                        format!(
                            "management address {} ({}), accepted before bans",
                            net.value, net.origin
                        ),
                    );
                }
                if let Some(e) = dynamic.find(DynSet::MgmtSession, addr) {
                    return verdict(
                        Decision::Accept,
                        stage,
                        format!(
                            "set mgmt_session: SSH session open when the agent first started{}",
                            element_note(e)
                        ),
                    );
                }
                if let Some(e) = dynamic.find(DynSet::Controller, addr) {
                    return verdict(
                        Decision::Accept,
                        stage,
                        format!(
                            "set controller: the controller this host is enrolled with, accepted before bans{}",
                            element_note(e)
                        ),
                    );
                }
            }
            Stage::Bans => {
                for set in [DynSet::Ban, DynSet::SharedBan] {
                    if let Some(e) = dynamic.find(set, addr) {
                        return verdict(
                            Decision::Drop,
                            stage,
                            format!("set {set}: banned{}", element_note(e)),
                        );
                    }
                }
            }
            Stage::Blocked => {
                if let Some(how) = assigned(policy, dynamic, Zone::Blocked, addr) {
                    return verdict(Decision::Drop, stage, format!("zone blocked: {how}"));
                }
            }
            Stage::Trusted => {
                if let Some(how) = assigned(policy, dynamic, Zone::Trusted, addr) {
                    return verdict(Decision::Accept, stage, format!("zone trusted: {how}"));
                }
                if let Some(e) = dynamic.find(DynSet::Peer, addr) {
                    return verdict(
                        Decision::Accept,
                        stage,
                        format!(
                            "set tenant_peer: a host of the tenant, trusted by the controller{}",
                            element_note(e)
                        ),
                    );
                }
            }
            Stage::Trunks => {
                if let Some(who) = trunk_of(policy, dynamic, addr) {
                    if let Some(v) = voip_verdict(policy, q, stage, who) {
                        return v;
                    }
                }
            }
            Stage::KnownGood => {
                if let Some(e) = dynamic.find(DynSet::KnownGood, addr) {
                    let who = format!("set known_good: registered source{}", element_note(e));
                    if let Some(v) = voip_verdict(policy, q, stage, who) {
                        return v;
                    }
                }
            }
            Stage::Grants => {
                if let Some((proto, port)) = q.port {
                    if let Some(g) = dynamic
                        .grants
                        .iter()
                        .find(|g| g.addr == addr && g.proto == proto && g.port == port)
                    {
                        let note = g
                            .comment
                            .as_deref()
                            .map(|c| format!(" \"{c}\""))
                            .unwrap_or_default();
                        return verdict(
                            Decision::Accept,
                            stage,
                            format!("set grant: {port}/{proto} granted{note}"),
                        );
                    }
                }
            }
            Stage::Zones => {
                let mut v = zone_verdict(policy, dynamic, q, addr);
                if let Some(note) = guard_note(policy, q) {
                    v.reason.push_str(&note);
                }
                return v;
            }
            // The guard only drops by rate, which no explanation can predict; its
            // presence is noted on the zone's verdict.
            Stage::Loopback | Stage::Established | Stage::Icmp | Stage::Guard => {}
        }
    }
    unreachable!("the zones stage always decides")
}

/// How `addr` is assigned to `zone` by a configured network or a resolved
/// name, in the order the ruleset checks them.
fn assigned(policy: &Policy, dynamic: &DynamicState, zone: Zone, addr: IpAddr) -> Option<String> {
    if let Some(net) = policy.network_of(zone, addr) {
        return Some(format!("network {} ({})", net.value, net.origin));
    }
    dynamic
        .find(DynSet::Resolved(zone), addr)
        .map(|e| format!("resolved name{}", element_note(e)))
}

fn zone_verdict(policy: &Policy, dynamic: &DynamicState, q: &Query, addr: IpAddr) -> Verdict {
    let mut found = Zone::FILTERED
        .into_iter()
        .find_map(|zone| Some((zone, assigned(policy, dynamic, zone, addr)?)));
    if found.is_none() {
        if let Some(iface) = q.iface.as_deref() {
            for zone in [
                Zone::Blocked,
                Zone::Trusted,
                Zone::Local,
                Zone::Other,
                Zone::Internet,
            ] {
                if let Some(i) = policy.interfaces(zone).find(|i| i.value == iface) {
                    found = Some((zone, format!("interface {iface} ({})", i.origin)));
                    break;
                }
            }
        }
    }
    let (zone, why) = found.unwrap_or((
        Zone::DEFAULT,
        "no network, name or interface assigns it (default zone)".into(),
    ));
    let base = Verdict {
        decision: Decision::Drop,
        stage: Stage::Zones,
        zone: Some(zone),
        reason: String::new(),
        open_services: Vec::new(),
    };
    match zone {
        Zone::Trusted => {
            return Verdict {
                decision: Decision::Accept,
                reason: format!("zone trusted by {why}: everything open"),
                ..base
            }
        }
        Zone::Blocked => {
            return Verdict {
                reason: format!("zone blocked by {why}: nothing open"),
                ..base
            }
        }
        _ => {}
    }
    let open: Vec<String> = policy
        .services
        .iter()
        .filter(|s| s.open_in(zone))
        .map(|s| s.name.clone())
        .collect();
    match q.port {
        None => Verdict {
            decision: Decision::PerService,
            reason: format!("zone {zone} by {why}"),
            open_services: open,
            ..base
        },
        Some((proto, port)) => match policy.services.iter().find(|s| s.open_in(zone) && s.matches(proto, port)) {
            Some(s) => Verdict {
                decision: Decision::Accept,
                reason: format!("zone {zone} by {why}; service {} ({port}/{proto}) is open to {zone}", s.name),
                ..base
            },
            None => Verdict {
                reason: format!("zone {zone} by {why}; no service on {port}/{proto} is open to {zone}: default drop"),
                open_services: open,
                ..base
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_policy;
    use std::time::Duration;

    fn policy() -> Policy {
        parse_policy(
            "management = [\"192.0.2.10\"]\n[zones.trusted]\nnetworks = [\"10.0.0.0/8\"]\n[zones.local]\ninterfaces = [\"eth1\"]\nnetworks = [\"192.168.1.0/24\"]\n[zones.blocked]\nnetworks = [\"198.51.100.0/24\"]\n",
            "agent.toml",
        )
        .unwrap()
    }

    fn q(addr: &str, port: Option<(Proto, u16)>) -> Query {
        Query {
            addr: addr.parse().unwrap(),
            iface: None,
            port,
        }
    }

    fn ban(addr: &str) -> DynamicState {
        let mut d = DynamicState::default();
        d.insert(
            DynSet::Ban,
            TimedAddr {
                addr: addr.parse().unwrap(),
                ttl: None,
                expires: Some(Duration::from_secs(60)),
                comment: Some("svcrack".into()),
            },
        );
        d
    }

    #[test]
    fn management_beats_a_ban() {
        let v = explain(
            &policy(),
            &ban("192.0.2.10"),
            &q("192.0.2.10", Some((Proto::Tcp, 22))),
        );
        assert_eq!((v.decision, v.stage), (Decision::Accept, Stage::Management));
        assert!(v.reason.contains("agent.toml:1 management[0]"), "{v}");
    }

    #[test]
    fn a_ban_beats_the_zone() {
        let v = explain(
            &policy(),
            &ban("192.168.1.7"),
            &q("192.168.1.7", Some((Proto::Udp, 5060))),
        );
        assert_eq!((v.decision, v.stage), (Decision::Drop, Stage::Bans));
        assert!(
            v.reason.contains("svcrack") && v.reason.contains("60s"),
            "{v}"
        );
    }

    #[test]
    fn zones_and_services() {
        let p = policy();
        let d = DynamicState::default();
        let v = explain(&p, &d, &q("192.168.1.7", Some((Proto::Tcp, 22))));
        assert_eq!((v.decision, v.zone), (Decision::Accept, Some(Zone::Local)));
        let v = explain(&p, &d, &q("203.0.113.5", Some((Proto::Tcp, 22))));
        assert_eq!((v.decision, v.zone), (Decision::Drop, Some(Zone::Internet)));
        assert!(v.reason.contains("default drop"), "{v}");
        let v = explain(&p, &d, &q("203.0.113.5", Some((Proto::Udp, 5060))));
        assert_eq!(v.decision, Decision::Accept);
        let v = explain(&p, &d, &q("10.1.2.3", Some((Proto::Tcp, 9999))));
        assert_eq!((v.decision, v.stage), (Decision::Accept, Stage::Trusted));
        let v = explain(&p, &d, &q("198.51.100.9", Some((Proto::Udp, 5060))));
        assert_eq!((v.decision, v.stage), (Decision::Drop, Stage::Blocked));
        let v = explain(
            &p,
            &d,
            &Query {
                iface: Some("eth1".into()),
                ..q("203.0.113.5", None)
            },
        );
        assert_eq!(
            (v.decision, v.zone),
            (Decision::PerService, Some(Zone::Local))
        );
        assert!(v.open_services.contains(&"ssh".to_string()));
        let v = explain(&p, &d, &q("::ffff:192.168.1.7", Some((Proto::Tcp, 22))));
        assert_eq!(
            v.zone,
            Some(Zone::Local),
            "IPv4-mapped addresses are judged as IPv4"
        );
    }

    #[test]
    fn the_controller_is_accepted_before_its_ban() {
        let p = policy();
        let mut d = DynamicState::default();
        let elem = |comment: &str| TimedAddr {
            addr: "198.51.100.7".parse().unwrap(),
            ttl: None,
            expires: None,
            comment: Some(comment.into()),
        };
        d.insert(DynSet::SharedBan, elem("shared: typo"));
        d.insert(DynSet::Controller, elem("controller https://ctl:7443"));
        let v = explain(&p, &d, &q("198.51.100.7", Some((Proto::Tcp, 22))));
        assert_eq!((v.decision, v.stage), (Decision::Accept, Stage::Management));
        assert!(v.reason.starts_with("set controller"), "{}", v.reason);
    }

    #[test]
    fn a_tenant_peer_is_trusted_unless_banned() {
        let p = policy();
        let mut d = DynamicState::default();
        d.insert(
            DynSet::Peer,
            TimedAddr {
                addr: "203.0.113.20".parse().unwrap(),
                ttl: None,
                expires: None,
                comment: Some("peer: acme/branch/pbx2".into()),
            },
        );
        let v = explain(&p, &d, &q("203.0.113.20", Some((Proto::Tcp, 9999))));
        assert_eq!((v.decision, v.stage), (Decision::Accept, Stage::Trusted));
        assert!(
            v.reason.contains("tenant_peer") && v.reason.contains("acme/branch/pbx2"),
            "{v}"
        );
        let mut banned = ban("203.0.113.20");
        banned.sets.extend(d.sets);
        let v = explain(&p, &banned, &q("203.0.113.20", Some((Proto::Tcp, 9999))));
        assert_eq!((v.decision, v.stage), (Decision::Drop, Stage::Bans));
    }

    #[test]
    fn known_good_gets_voip_only() {
        let p = parse_policy(
            "[[services]]\nname = \"sip-udp\"\nzones = [\"local\"]\n",
            "a.toml",
        )
        .unwrap();
        let mut d = DynamicState::default();
        d.insert(
            DynSet::KnownGood,
            TimedAddr {
                addr: "203.0.113.5".parse().unwrap(),
                ttl: None,
                expires: None,
                comment: None,
            },
        );
        let v = explain(&p, &d, &q("203.0.113.5", Some((Proto::Udp, 5060))));
        assert_eq!((v.decision, v.stage), (Decision::Accept, Stage::KnownGood));
        let v = explain(&p, &d, &q("203.0.113.5", Some((Proto::Tcp, 22))));
        assert_eq!((v.decision, v.stage), (Decision::Drop, Stage::Zones));
    }
}
