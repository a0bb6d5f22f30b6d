//! Zones, from most to least trusted.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a source address stands. Every packet is judged in exactly one zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Zone {
    /// Everything open: the PBX's own sites, the operator's networks.
    Trusted,
    /// The LAN: phones, provisioning, the admin interface.
    Local,
    /// Operator-defined: a DMZ, a VPN, a partner network.
    Other,
    /// Anything not assigned elsewhere; only what is exposed, under the responsive firewall.
    Internet,
    /// Nothing at all, checked before the conntrack shortcut like a ban.
    Blocked,
}

impl Zone {
    pub const ALL: [Zone; 5] = [
        Zone::Trusted,
        Zone::Local,
        Zone::Other,
        Zone::Internet,
        Zone::Blocked,
    ];

    /// The zones whose traffic is judged service by service (trusted accepts all,
    /// blocked accepts nothing).
    pub const FILTERED: [Zone; 3] = [Zone::Local, Zone::Other, Zone::Internet];

    /// The zone of a source that no network, name or interface assigns.
    pub const DEFAULT: Zone = Zone::Internet;

    pub fn as_str(self) -> &'static str {
        match self {
            Zone::Trusted => "trusted",
            Zone::Local => "local",
            Zone::Other => "other",
            Zone::Internet => "internet",
            Zone::Blocked => "blocked",
        }
    }

    pub fn parse(s: &str) -> Option<Zone> {
        Zone::ALL.into_iter().find(|z| z.as_str() == s)
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}
