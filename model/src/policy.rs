//! The validated policy: what the agent enforces.

use crate::service::Service;
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

    /// The configured network of `zone` that holds `addr`, if any.
    pub fn network_of(&self, zone: Zone, addr: IpAddr) -> Option<&Sourced<IpNet>> {
        self.networks(zone).find(|n| n.value.contains(&addr))
    }

    /// The management entry that holds `addr`, if any.
    pub fn management_of(&self, addr: IpAddr) -> Option<&Sourced<IpNet>> {
        self.management.iter().find(|n| n.value.contains(&addr))
    }
}
