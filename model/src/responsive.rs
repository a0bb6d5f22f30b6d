//! The responsive firewall's settings: in-kernel rate tiers for SIP/IAX2, the
//! SIP watch, and how detectors judge and ban.
//!
//! Defaults are chosen so a PBX on the open internet needs no configuration:
//! an attack tool is banned at its first packets, a phone retrying a wrong
//! password at its own pace is tolerated for a long while, and a registered
//! phone (known-good) never meets a limit.

use ipnet::IpNet;
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

/// International dialling prefixes: `00` (ITU, most of the world), `011`
/// (North America) and `+` (E.164 as written in a URI). A call abroad is what
/// toll fraud sells, so these are fraud prefixes by default.
pub const INTERNATIONAL_PREFIXES: &[&str] = &["00", "011", "+"];

/// Premium-rate prefixes fraudsters dial to collect the revenue share:
/// `1900` (North America's 1-900, and Australia's 1900), `0900` (Germany,
/// Austria, Switzerland, the Netherlands, Belgium, the UK), `0906` and `0909`
/// (the UK's and the Netherlands' premium entertainment ranges).
///
/// Deliberately not listed: prefixes that are ordinary numbers elsewhere, such
/// as `09` (Nuremberg is 0911, Japan's mobiles are 090), `089x` (Munich) or
/// `1976` (976 is an exchange, not a prefix, in North America). Operators add
/// their country's premium ranges with `extra_prefixes`.
pub const PREMIUM_PREFIXES: &[&str] = &["1900", "0900", "0906", "0909"];

/// Outside-line ("tech") prefixes that attack tools put in front of a fraud
/// prefix because many PBXs want them (`9011…`, `900…`): a fraud prefix
/// matches after one of these too. `*` and `#` in front of a number are always
/// skipped, as no number starts with them.
pub const TECH_PREFIXES: &[&str] = &["9"];

/// Most distinct destinations `sweep_destinations` may be set to: the detector
/// remembers that many per source, and a flood of spoofed sources multiplies it.
pub const MAX_SWEEP_DESTINATIONS: u32 = 100;

/// What a fraud prefix stands for, for the verdict's sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrefixKind {
    International,
    Premium,
    /// Listed by the operator and not one of the built-in prefixes.
    Configured,
}

impl PrefixKind {
    /// The kind of a prefix: built-in ones keep their meaning wherever they
    /// are listed.
    pub fn of(prefix: &str) -> PrefixKind {
        if INTERNATIONAL_PREFIXES.contains(&prefix) {
            PrefixKind::International
        } else if PREMIUM_PREFIXES.contains(&prefix) {
            PrefixKind::Premium
        } else {
            PrefixKind::Configured
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PrefixKind::International => "international",
            PrefixKind::Premium => "premium",
            PrefixKind::Configured => "configured",
        }
    }
}

/// Toll fraud: calls to costly destinations through a PBX by someone who is
/// not one of its phones or trunks.
///
/// Such a caller sends INVITEs without credentials, hoping the PBX routes
/// anonymous calls, or with guessed ones. A phone's first INVITE is also
/// without credentials (the PBX challenges it and the phone retries with
/// them), so only an INVITE to a fraud prefix, or a sweep over many
/// destinations, is proof; a call to an extension never is. Known-good
/// sources (live registrations), trunks and exempt addresses are never judged
/// by this detector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TollFraud {
    pub enabled: bool,
    /// Dial prefixes whose calls cost money: by default
    /// [`INTERNATIONAL_PREFIXES`] and [`PREMIUM_PREFIXES`]. An INVITE to one of
    /// them without credentials, or refused for its credentials, bans the
    /// source at once.
    pub prefixes: Vec<String>,
    /// The operator's own fraud prefixes, on top of `prefixes` (so adding one
    /// does not mean retyping the defaults).
    pub extra_prefixes: Vec<String>,
    /// See [`TECH_PREFIXES`].
    pub tech_prefixes: Vec<String>,
    /// Distinct destinations of INVITEs without credentials (never followed
    /// by credentials) or refused, from one address within `sweep_window`,
    /// that make a sweep whatever the numbers: a tool trying which dial plan
    /// lets it out (`972…`, `00972…`, `9011972…`).
    pub sweep_destinations: u32,
    pub sweep_window: Duration,
}

impl Default for TollFraud {
    fn default() -> Self {
        TollFraud {
            enabled: true,
            prefixes: INTERNATIONAL_PREFIXES
                .iter()
                .chain(PREMIUM_PREFIXES)
                .map(|s| s.to_string())
                .collect(),
            extra_prefixes: Vec::new(),
            tech_prefixes: TECH_PREFIXES.iter().map(|s| s.to_string()).collect(),
            sweep_destinations: 5,
            sweep_window: Duration::from_secs(60),
        }
    }
}

impl TollFraud {
    /// Every fraud prefix with its kind, operator additions last, duplicates once.
    pub fn all_prefixes(&self) -> Vec<(String, PrefixKind)> {
        let mut out: Vec<(String, PrefixKind)> = Vec::new();
        for p in self.prefixes.iter().chain(&self.extra_prefixes) {
            if !out.iter().any(|(q, _)| q == p) {
                out.push((p.clone(), PrefixKind::of(p)));
            }
        }
        out
    }
}

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
    pub toll_fraud: TollFraud,
    /// Addresses no detector may ban, whatever they send: the judge treats
    /// them like management and trusted networks. For a partner or monitoring
    /// host that is not in a trusted zone but must never be locked out.
    pub allow: Vec<IpNet>,
    /// Inline mode (NFQUEUE): unknown sources' SIP waits for the agent's verdict.
    pub inline: crate::inline::Inline,
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
            toll_fraud: TollFraud::default(),
            allow: Vec::new(),
            inline: crate::inline::Inline::default(),
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

    /// Whether `addr` is on the allow-list (IPv4-mapped IPv6 folded to IPv4).
    pub fn allows(&self, addr: std::net::IpAddr) -> bool {
        let addr = crate::net::canonical(addr);
        self.allow.iter().any(|n| n.contains(&addr))
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

    #[test]
    fn fraud_prefixes_keep_their_kind_and_extras_come_last() {
        let t = TollFraud {
            extra_prefixes: vec!["0044".into(), "00".into()],
            ..Default::default()
        };
        let all = t.all_prefixes();
        assert_eq!(all[0], ("00".to_string(), PrefixKind::International));
        assert!(all.contains(&("1900".to_string(), PrefixKind::Premium)));
        assert_eq!(
            all.last(),
            Some(&("0044".to_string(), PrefixKind::Configured))
        );
        assert_eq!(all.iter().filter(|(p, _)| p == "00").count(), 1);
    }

    #[test]
    fn the_allow_list_matches_mapped_addresses() {
        let r = Responsive {
            allow: vec!["198.51.100.0/24".parse().unwrap()],
            ..Default::default()
        };
        assert!(r.allows("198.51.100.7".parse().unwrap()));
        assert!(r.allows("::ffff:198.51.100.7".parse().unwrap()));
        assert!(!r.allows("198.51.101.7".parse().unwrap()));
    }
}
