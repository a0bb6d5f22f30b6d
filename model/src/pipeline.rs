//! The order in which the input chain judges a packet.
//!
//! The renderer turns each stage into rules and `explain` walks the same stages,
//! so the explanation cannot drift from what the kernel does.

/// One step of the input chain, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Loopback traffic is always accepted.
    Loopback,
    /// Management addresses and first-start SSH peers: never blocked, not even by a ban.
    Management,
    /// Local and shared bans, before the conntrack shortcut so a ban cuts a live flow.
    Bans,
    /// Sources in the blocked zone (networks and names), also before conntrack.
    Blocked,
    /// The responsive firewall: SIP/IAX2 packets from sources that are neither
    /// trusted, trunks nor known-good meet the per-source rate tiers, and SIP is
    /// copied to the agent. Before conntrack, because a UDP attacker's packets
    /// are all "established" after the first.
    Guard,
    /// Replies and related traffic of accepted connections.
    Established,
    /// IPv6 neighbour discovery, which IPv6 cannot work without.
    Icmp,
    /// Trusted networks and names: everything open.
    Trusted,
    /// Trunks and branch offices found in the PBX's configuration get its
    /// signalling and media.
    Trunks,
    /// Sources with a live registration get the PBX's signalling and media.
    KnownGood,
    /// Per-user grants: one service opened for one registered address.
    Grants,
    /// Zone of the source (network, name, interface, default) × its open services.
    Zones,
}

/// The input chain, first to last; anything that falls through is dropped.
pub const INPUT_PIPELINE: [Stage; 12] = [
    Stage::Loopback,
    Stage::Management,
    Stage::Bans,
    Stage::Blocked,
    Stage::Guard,
    Stage::Established,
    Stage::Icmp,
    Stage::Trusted,
    Stage::Trunks,
    Stage::KnownGood,
    Stage::Grants,
    Stage::Zones,
];

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Loopback => "loopback",
            Stage::Management => "management",
            Stage::Bans => "bans",
            Stage::Blocked => "blocked",
            Stage::Guard => "guard",
            Stage::Established => "established",
            Stage::Icmp => "icmp",
            Stage::Trusted => "trusted",
            Stage::Trunks => "trunks",
            Stage::KnownGood => "known-good",
            Stage::Grants => "grants",
            Stage::Zones => "zones",
        }
    }
}
