//! The things that change often — bans, known-good sources, per-user grants,
//! resolved names — live as set elements with timeouts, never as rules, so they
//! change without re-rendering the ruleset.

use crate::service::Proto;
use crate::zone::Zone;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// A dynamic address set. Each exists once per address family in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DynSet {
    /// Peers of SSH sessions open when the agent first started (lock-out guard).
    MgmtSession,
    /// Addresses of the controller the host is enrolled with, resolved from
    /// its URL: accepted with the management addresses, before bans and
    /// zones, so neither a ban nor a pushed policy cuts the host off from the
    /// one place that can lift a ban.
    Controller,
    /// Bans made by this host's detectors or by hand.
    Ban,
    /// Bans shared by the controller from other hosts of the tenant.
    SharedBan,
    /// Sources with a live successful registration.
    KnownGood,
    /// Addresses of trunk peers named by host name in the PBX's configuration.
    Trunk,
    /// Addresses of the tenant's other hosts, from the controller: trusted
    /// like the trusted zone (branch-office trunks need no configuration).
    Peer,
    /// Addresses of the host names assigned to a zone.
    Resolved(Zone),
}

impl DynSet {
    pub const ALL: [DynSet; 12] = [
        DynSet::MgmtSession,
        DynSet::Controller,
        DynSet::Ban,
        DynSet::SharedBan,
        DynSet::KnownGood,
        DynSet::Trunk,
        DynSet::Peer,
        DynSet::Resolved(Zone::Trusted),
        DynSet::Resolved(Zone::Local),
        DynSet::Resolved(Zone::Other),
        DynSet::Resolved(Zone::Internet),
        DynSet::Resolved(Zone::Blocked),
    ];

    /// The set's name without the family suffix; also its name on the command line.
    pub fn base_name(self) -> String {
        match self {
            DynSet::MgmtSession => "mgmt_session".into(),
            DynSet::Controller => "controller".into(),
            DynSet::Ban => "ban".into(),
            DynSet::SharedBan => "ban_shared".into(),
            DynSet::KnownGood => "known_good".into(),
            DynSet::Trunk => "trunk_dyn".into(),
            DynSet::Peer => "tenant_peer".into(),
            DynSet::Resolved(zone) => format!("zone_{zone}_dyn"),
        }
    }

    pub fn parse(name: &str) -> Option<DynSet> {
        let name = name.replace('-', "_");
        DynSet::ALL.into_iter().find(|s| s.base_name() == name)
    }
}

impl fmt::Display for DynSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base_name())
    }
}

/// One address element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedAddr {
    pub addr: IpAddr,
    /// Lifetime given when added; `None` = until removed.
    pub ttl: Option<Duration>,
    /// Time left, as the kernel reports it (only known for live elements).
    pub expires: Option<Duration>,
    /// Why it is there (reason, evidence summary); at most [`MAX_COMMENT`] bytes.
    pub comment: Option<String>,
}

/// A per-user grant: one service port opened for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub addr: IpAddr,
    pub proto: Proto,
    pub port: u16,
    pub ttl: Option<Duration>,
    pub expires: Option<Duration>,
    pub comment: Option<String>,
}

/// nftables keeps element comments in 128 bytes of user data.
pub const MAX_COMMENT: usize = 120;

/// Cuts a comment to what the kernel keeps, on a character boundary.
pub fn clip_comment(s: &str) -> String {
    let mut end = s.len().min(MAX_COMMENT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The elements of every dynamic set: what the kernel holds, or what should be added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynamicState {
    pub sets: BTreeMap<DynSet, Vec<TimedAddr>>,
    pub grants: Vec<Grant>,
}

impl DynamicState {
    pub fn find(&self, set: DynSet, addr: IpAddr) -> Option<&TimedAddr> {
        self.sets.get(&set)?.iter().find(|e| e.addr == addr)
    }

    pub fn insert(&mut self, set: DynSet, elem: TimedAddr) {
        self.sets.entry(set).or_default().push(elem);
    }

    pub fn len(&self) -> usize {
        self.sets.values().map(Vec::len).sum::<usize>() + self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
