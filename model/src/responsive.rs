//! The responsive firewall's settings: in-kernel rate tiers for SIP/IAX2, the
//! SIP watch, and how detectors judge and ban.
//!
//! Defaults are chosen so a PBX on the open internet needs no configuration:
//! an attack tool is banned at its first packets, a phone retrying a wrong
//! password at its own pace is tolerated for a long while, and a registered
//! phone (known-good) never meets a limit.

use std::time::Duration;

/// User-Agent fragments of known attack tools (case-insensitive substring match).
/// Deliberately absent: `sipsak`, `Ozeki`, `PortSIP`, also used by legitimate
/// tools and SDKs.
pub const SCANNER_USER_AGENTS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipscan",
    "vaxsipuseragent",
    "pplsip",
    "sundayddr",
    "iwar",
    "simplesip",
    "sip call",
    "voipsec",
    "conaito",
    "usaairport",
    "zxcvfdf11",
    "fdgddfg546df4g8d5f",
];

/// Per-source rate limits applied in the kernel to SIP/IAX2 packets from sources
/// that are neither trusted, a trunk, nor known-good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiers {
    /// Packets per second a new source may send to the signalling ports.
    pub rate: u32,
    /// Packets allowed above `rate` in a burst. A phone needs 2 to 6 before its
    /// registration makes it known-good; a guessing tool gets only a few
    /// guesses in flight before its failures come back.
    pub burst: u32,
    /// Packets over the limit tolerated (as a burst, refilled at one per second)
    /// before the kernel bans the source by itself.
    pub strikes: u32,
    /// How long the kernel's own flood ban lasts before the agent's verdict (with
    /// its escalation) replaces it.
    pub flood_ban: Duration,
}

impl Default for Tiers {
    fn default() -> Self {
        Tiers {
            rate: 10,
            burst: 10,
            strikes: 100,
            flood_ban: Duration::from_secs(600),
        }
    }
}

/// Thresholds of the detectors. Counts are per source address unless named
/// otherwise; a source with a live registration (known-good) is judged more
/// leniently because an office NAT address carries many phones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detect {
    /// Failures in `burst_window` that no phone produces (phones wait seconds
    /// between attempts): a guessing tool, whatever its User-Agent.
    pub burst_failures: u32,
    pub burst_window: Duration,
    /// Failures of one user from one address within `slow_window`: a phone left
    /// with a wrong password is tolerated this long, a slow guesser is not.
    pub slow_failures: u32,
    pub slow_window: Duration,
    /// Distinct users failing authentication from one address in `user_window`.
    pub distinct_failing_users: u32,
    /// Distinct users answered "not found" (404) or refused (403) without
    /// credentials from one address in `user_window`: extension enumeration.
    pub distinct_unknown_users: u32,
    /// Distinct users challenged (401/407) without credentials and never
    /// following up with credentials, from one address in `user_window`: a
    /// REGISTER sweep.
    pub distinct_unanswered_users: u32,
    pub user_window: Duration,
    /// Unparseable messages from one address in `burst_window`.
    pub garbage: u32,
    /// Messages per second (seen by the agent) from one address that is not known-good.
    pub flood_rate: u32,
    /// How many times stricter limits are multiplied for a known-good source.
    pub known_good_factor: u32,
}

impl Default for Detect {
    fn default() -> Self {
        Detect {
            burst_failures: 3,
            burst_window: Duration::from_secs(5),
            slow_failures: 40,
            slow_window: Duration::from_secs(3600),
            distinct_failing_users: 5,
            distinct_unknown_users: 5,
            distinct_unanswered_users: 10,
            user_window: Duration::from_secs(600),
            garbage: 20,
            flood_rate: 50,
            known_good_factor: 5,
        }
    }
}

/// Settings of the responsive firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Responsive {
    /// Off: no tiers, no watch, no detectors (SIP is then filtered by zone only).
    pub enabled: bool,
    /// NFLOG group the agent reads the copy of SIP traffic from.
    pub nflog_group: u16,
    pub tiers: Tiers,
    pub detect: Detect,
    /// Extra attack-tool User-Agent fragments, on top of [`SCANNER_USER_AGENTS`].
    pub scanner_user_agents: Vec<String>,
    /// Ban durations by offence: the first ban lasts the first entry, a repeat
    /// offender gets the next, the last entry repeats.
    pub ban_durations: Vec<Duration>,
    /// How long the agent remembers an address's offences for escalation.
    pub offence_memory: Duration,
    /// Per-source states kept in memory at most (least recently seen forgotten first).
    pub max_sources: usize,
}

impl Default for Responsive {
    fn default() -> Self {
        Responsive {
            enabled: true,
            nflog_group: 5060,
            tiers: Tiers::default(),
            detect: Detect::default(),
            scanner_user_agents: Vec::new(),
            ban_durations: vec![
                Duration::from_secs(600),
                Duration::from_secs(3600),
                Duration::from_secs(86_400),
                Duration::from_secs(7 * 86_400),
            ],
            offence_memory: Duration::from_secs(30 * 86_400),
            max_sources: 20_000,
        }
    }
}

impl Responsive {
    /// Every User-Agent fragment that marks an attack tool, lower-case.
    pub fn scanner_fragments(&self) -> Vec<String> {
        SCANNER_USER_AGENTS
            .iter()
            .map(|s| s.to_string())
            .chain(
                self.scanner_user_agents
                    .iter()
                    .map(|s| s.to_ascii_lowercase()),
            )
            .collect()
    }

    /// The ban for an address's `offence`-th offence (1-based).
    pub fn ban_duration(&self, offence: u32) -> Duration {
        let i = (offence.max(1) as usize - 1).min(self.ban_durations.len().saturating_sub(1));
        self.ban_durations
            .get(i)
            .copied()
            .unwrap_or(Duration::from_secs(600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_escalate_and_the_last_step_repeats() {
        let r = Responsive::default();
        assert_eq!(r.ban_duration(1), Duration::from_secs(600));
        assert_eq!(r.ban_duration(2), Duration::from_secs(3600));
        assert_eq!(r.ban_duration(4), Duration::from_secs(7 * 86_400));
        assert_eq!(r.ban_duration(9), Duration::from_secs(7 * 86_400));
        assert_eq!(r.ban_duration(0), Duration::from_secs(600));
    }

    #[test]
    fn operator_fragments_extend_the_builtin_list() {
        let r = Responsive {
            scanner_user_agents: vec!["EvilDialer".into()],
            ..Default::default()
        };
        let f = r.scanner_fragments();
        assert!(f.contains(&"friendly-scanner".to_string()));
        assert!(f.contains(&"evildialer".to_string()));
    }
}
